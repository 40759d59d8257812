"""Data of a pretraining run: sources, a deterministic resumable sampler and the Lightning data module.

Sources (``DataConfig``): SeisBench datasets by name or folder and ingested own data (one
:class:`~seisbench_xlstm.data.MixedDataset`; ``train`` split for training, ``dev`` for validation; random
4096-sample windows from the data layer's pretraining generator), and continuous records
(:class:`~seisbench_xlstm.data.continuous.ContinuousWindows`; the first 85% of every segment for training, the
rest for validation). Together they are one index space: traces first, then continuous windows.

**Determinism and exact resume.** The sampler yields keys ``(epoch, position, index)``: ``index`` is the item,
``position`` its place in the epoch's order (the same on any number of devices). Every random choice of an item
(the window offset inside a trace, the continuous windows' offsets, and the ``seed`` of its recipe-1 mask) is
seeded by ``(seed, epoch, position)``, so a batch is a pure function of the seed, the epoch and its place in the
epoch, whatever the worker or device count. With N devices, rank r takes positions r, r + N, ... The data
module records the last position each training batch consumed (``on_before_batch_transfer``, which runs for the
batch about to be trained on, not for batches prefetched) and saves it in the checkpoint; on resume the sampler
starts right after it, so the next batches equal those of an uninterrupted run.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf

from seisbench_xlstm.data import (
    DatasetNotAvailableError,
    PretrainConfig,
    check_available,
    mix_datasets,
    pretraining_generator,
)
from seisbench_xlstm.data.continuous import ContinuousConfig, ContinuousWindows
from seisbench_xlstm.data.loaders import default_num_workers

__all__ = ["check_datasets", "ingest_cached", "WindowDataset", "EpochSampler", "PretrainDataModule", "item_seed"]


def item_seed(*keys: int) -> int:
    """A 32-bit seed from integer keys (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def check_datasets(datasets: list[str]) -> None:
    """Checks at once that every dataset is on this machine; raises one :class:`DatasetNotAvailableError` naming
    all missing ones and where each was looked for."""
    missing = []
    for name in datasets:
        try:
            check_available(name)
        except DatasetNotAvailableError as err:
            missing.append((name, str(err)))
        except ValueError as err:  # neither a known name nor an existing folder
            missing.append((name, str(err)))
    if missing:
        lines = [f"{len(missing)} of {len(datasets)} pretraining dataset(s) are not available:"]
        lines += [f"  - {name}: {msg.splitlines()[0]}" for name, msg in missing]
        how = next((msg.split("\n", 1)[1] for _, msg in missing if "\n" in msg), "")
        if how:
            lines.append(how)
        lines.append(
            "Run a 'local' experiment (e.g. experiment=xlstm_large/pure_mlstm_sequential_12m_local) to pretrain on "
            "../shared/data, or set data.datasets=[...] to datasets or folders you have."
        )
        raise DatasetNotAvailableError("\n".join(lines))


def ingest_cached(source, cache_dir: str | Path | None = None, progress: bool = False) -> Path:
    """``source`` (:class:`~pretrain.config.IngestSourceConfig`) through the data layer's cached ingest
    (:func:`seisbench_xlstm.data.ingest_cached`: converted once into ``cache_dir/<name>``, reused afterwards)."""
    from seisbench_xlstm.data import ingest_cached as cached

    return cached(source.waveforms, source.picks, source.format, source.name, cache_dir, progress=progress)


class _TraceSource:
    """Random windows of SeisBench traces (the data layer's pretraining generator), seeded per item."""

    def __init__(self, mixed, window_len: int, seed: int):
        self.generator = pretraining_generator(mixed, PretrainConfig(window_len=window_len))
        self.seed = seed

    def __len__(self) -> int:
        return len(self.generator)

    def get(self, index: int, epoch: int, position: int) -> np.ndarray:
        # seisbench.generate draws from NumPy's global RNG: seed it for this item, restore it afterwards
        state = np.random.get_state()
        np.random.seed(item_seed(self.seed, epoch, position))
        try:
            return self.generator[index]["X"]
        finally:
            np.random.set_state(state)


class _ContinuousSource:
    def __init__(self, windows: ContinuousWindows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def get(self, index: int, epoch: int, position: int) -> np.ndarray:
        return self.windows.window(index, epoch)


#: Tag of the per-window seeds for the training step's random choices (masks), apart from the windows' own.
MASK_SEED_TAG = 0x3A5C


class WindowDataset(torch.utils.data.Dataset):
    """All sources as one index space. ``dataset[(epoch, position, index)]`` =
    ``{"X": float32 (3, window_len), "epoch", "position", "index", "seed"}``; ``seed`` (from ``(seed, epoch,
    position)``) seeds the window's mask in the training step, so that a window gets the same mask whatever the
    number of devices, the batch it lands in or a resume."""

    def __init__(self, sources: list, seed: int = 0):
        self.sources = [s for s in sources if len(s)]
        self.seed = int(seed)
        self._offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, key) -> dict:
        epoch, position, index = (int(k) for k in key)
        s = int(np.searchsorted(self._offsets, index, side="right")) - 1
        x = self.sources[s].get(index - int(self._offsets[s]), epoch, position)
        return {
            "X": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            "epoch": epoch,
            "position": position,
            "index": index,
            "seed": item_seed(self.seed, epoch, position, MASK_SEED_TAG),
        }


class EpochSampler(torch.utils.data.Sampler):
    """Keys ``(epoch, position, index)`` of one device's share of an epoch, deterministic for (seed, epoch).

    An epoch is ``windows_per_epoch`` draws: shuffled passes over all items (``shuffle``), or items in order
    (validation: always epoch 0, the same keys every time; :meth:`set_epoch` leaves it alone). Device ``rank`` of
    ``world_size`` takes positions ``rank, rank + world_size, ...`` (equal shares, the remainder dropped), so the
    devices together train on the positions one device would, each exactly once. :meth:`resume` makes the next
    epoch start after the first ``consumed`` keys of this device's share.
    """

    def __init__(
        self,
        num_items: int,
        windows_per_epoch: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if num_items < 1:
            raise ValueError("the sampler needs at least one item")
        self.num_items = num_items
        self.windows_per_epoch = int(windows_per_epoch or num_items)
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.windows_per_epoch // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at every epoch, for validation loaders too: only a shuffling sampler follows it."""
        if self.shuffle:
            self.epoch = int(epoch)

    def resume(self, epoch: int, consumed: int) -> None:
        """The iteration of ``epoch`` starts after its first ``consumed`` keys (of this device)."""
        if consumed >= len(self):
            epoch, consumed = epoch + 1, 0
        self.epoch = int(epoch)
        self._resume = (int(epoch), int(consumed))

    def order(self, epoch: int) -> torch.Tensor:
        """Item of every position of ``epoch`` (all devices), ``(windows_per_epoch,)``."""
        if not self.shuffle:
            return torch.arange(self.windows_per_epoch) % self.num_items
        g = torch.Generator().manual_seed(item_seed(self.seed, epoch, 0x5A))
        passes = math.ceil(self.windows_per_epoch / self.num_items)
        return torch.cat([torch.randperm(self.num_items, generator=g) for _ in range(passes)])[: self.windows_per_epoch]

    def __iter__(self):
        epoch, skip = self.epoch, 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        self._resume = None
        order = self.order(epoch)
        positions = range(self.rank, len(self) * self.world_size, self.world_size)
        for j, position in enumerate(positions):
            if j >= skip:
                yield (epoch, position, int(order[position]))


class PretrainDataModule(L.LightningDataModule):
    """Lightning data module of a run (``config`` is the composed run config; see :mod:`pretrain.config`)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.data = config.data
        self.train_sampler: EpochSampler | None = None
        self._pending_state: dict | None = None
        self._progress = {"epoch": 0, "consumed": 0}
        self._paths: list[str] | None = None

    # -------------------------------------------------------------- sources
    def dataset_paths(self) -> list[str]:
        """Dataset names/folders plus the ingested folders (ingesting where needed)."""
        if self._paths is None:
            check_datasets(list(self.data.datasets))
            paths = [str(p) for p in self.data.datasets]
            paths += [str(ingest_cached(s, self.data.cache_dir)) for s in self.data.ingest]
            self._paths = paths
        return self._paths

    def prepare_data(self) -> None:
        self.dataset_paths()

    def _sources(self, split: str) -> list:
        seed = int(self.config.seed)
        sources: list = []
        paths = self.dataset_paths()
        if paths:
            mixed = mix_datasets(paths, seed=seed)
            part = mixed.train() if split == "train" else mixed.dev()
            if len(part):
                sources.append(_TraceSource(part, self.data.window_len, seed))
        if self.data.continuous:
            f = float(self.data.continuous_val_fraction)
            span = (0.0, 1.0 - f) if split == "train" else (1.0 - f, 1.0)
            if split == "train" or f > 0:
                cfg = ContinuousConfig(window_len=self.data.window_len, seed=seed, span=span)
                sources.append(_ContinuousSource(ContinuousWindows(list(self.data.continuous), cfg)))
        return sources

    def setup(self, stage: str | None = None) -> None:
        if self.train_sampler is not None:
            return
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        self.train_set = WindowDataset(self._sources("train"), int(self.config.seed))
        if len(self.train_set) == 0:
            raise ValueError(f"No training windows in {OmegaConf.to_container(self.data)}")
        per_epoch = self.data.windows_per_epoch or len(self.train_set)
        if per_epoch // world < self.data.batch_size:
            raise ValueError(
                f"{per_epoch} windows per epoch over {world} device(s) do not fill one batch of {self.data.batch_size}"
            )
        self.train_sampler = EpochSampler(len(self.train_set), per_epoch, int(self.config.seed), True, rank, world)
        self.val_set = WindowDataset(self._sources("dev"), int(self.config.seed))
        self.val_sampler = None
        if len(self.val_set):
            n_val = min(self.data.val_windows or len(self.val_set), len(self.val_set))
            self.val_sampler = EpochSampler(len(self.val_set), n_val, int(self.config.seed), False, rank, world)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def summary(self) -> str:
        parts = [f"{type(s).__name__.strip('_')}: {len(s)}" for s in self.train_set.sources]
        return (
            f"training items {len(self.train_set)} ({', '.join(parts)}), {self.train_sampler.windows_per_epoch} "
            f"windows per epoch; validation items {len(self.val_set)}"
        )

    # -------------------------------------------------------------- loaders
    def _loader(self, dataset, sampler, drop_last: bool):
        workers = self.data.num_workers if self.data.num_workers is not None else default_num_workers()
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.data.batch_size,
            sampler=sampler,
            num_workers=workers,
            drop_last=drop_last,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def train_dataloader(self):
        return self._loader(self.train_set, self.train_sampler, drop_last=True)

    def val_dataloader(self):
        if self.val_sampler is None:
            return []
        return self._loader(self.val_set, self.val_sampler, drop_last=False)

    # -------------------------------------------------------------- resume
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            world = self.train_sampler.world_size
            last = int(batch["position"].max())
            self._progress = {"epoch": int(batch["epoch"][0]), "consumed": last // world + 1}
        # the windows' mask seeds stay on the host (a list): masks are drawn there without waiting for the device
        batch["seed"] = batch["seed"].tolist()
        return batch

    def state_dict(self) -> dict:
        """Epoch and number of this device's keys consumed by training (saved in checkpoints)."""
        return dict(self._progress)

    def load_state_dict(self, state: dict) -> None:
        if self.train_sampler is None:
            self._pending_state = dict(state)
            return
        self._pending_state = None
        self._progress = dict(state)
        self.train_sampler.resume(int(state["epoch"]), int(state["consumed"]))
