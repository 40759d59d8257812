"""Data of a fine-tuning run: labelled datasets, label fraction, teacher pseudo-labels, generators, loaders.

Sources (``DataConfig``, ``PseudoConfig``):

* **Labelled datasets** (names or SeisBench-format folders, plus own data converted once by the ingest tool with
  its default options into ``data.cache_dir``). Each keeps its ``split`` column (or gets one by event,
  ``assign_splits``): ``train`` trains, ``dev`` selects, ``test`` is not read.
* **Label fraction** (:func:`select_label_fraction`): the training traces that keep their analyst picks are
  chosen by event (traces without an event id are their own group) in a seeded random order until the fraction of
  training traces is reached; the order depends only on the seed and the event ids, so the 5% events are among
  the 10% events. Only ``train`` rows are candidates: dev and test are never touched. The other training traces
  are left out, or with ``pseudo.unlabelled_traces`` kept without analyst picks (teacher picks only).
* **Teacher pseudo-labels** (:mod:`seisbench_xlstm.pseudolabels`): picks of the teacher ensemble on the labelled
  training traces (combined with the analyst picks by the analyst-wins rule) as pseudo-pick columns, and a
  pseudo-labelled SeisBench dataset of the continuous records (its ``train`` part, a share ``pseudo.weight`` of the
  training windows). Both are cached in ``data.cache_dir/pseudo`` under a key of their inputs and settings, so
  every architecture trains on the same teacher labels.

Windows come from the data layer's picking generator (windows around picks with random offsets, real pre-arrival
noise windows, the training augmentations, ProbabilisticLabeller targets) at the architecture's window length
and normalisation. ``val/loss`` uses fixed dev windows (each item seeded by its index); ``val/f1`` the whole dev
traces (:func:`seisbench_xlstm.evaluation.dataset_traces`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from seisbench_xlstm.data import (
    AugmentationConfig,
    NormalizeConfig,
    PickingConfig,
    assign_splits,
    default_ingest_cache,
    label_columns_for,
    make_loader,
    mix_datasets,
    open_dataset,
    pick_columns,
    picking_generator,
)
from seisbench_xlstm.data.loaders import default_num_workers
from seisbench_xlstm.evaluation import dataset_traces
from seisbench_xlstm.pseudolabels import (
    PseudoLabelConfig,
    add_pseudo_columns,
    load_teachers,
    pseudo_pick_columns,
    pseudo_picks_for_traces,
    write_continuous_dataset,
)

from .models import ARCH_SPECS, EventDetectionTarget

__all__ = ["ingest_cached", "event_keys", "select_label_fraction", "FinetuneData", "FinetuneDataModule",
           "SeededWindows"]


def ingest_cached(source, cache_dir: str | Path | None = None) -> Path:
    """``source`` (``IngestSourceConfig``) through the data layer's cached ingest
    (:func:`seisbench_xlstm.data.ingest_cached`: converted once into ``cache_dir/<name>``, reused afterwards)."""
    from seisbench_xlstm.data import ingest_cached as cached

    return cached(source.waveforms, source.picks, source.format, source.name, cache_dir)


def event_keys(metadata: pd.DataFrame) -> np.ndarray:
    """Group key per trace: ``event:<source_id>``, or ``trace:<trace_name>`` where there is no event id."""
    names = metadata["trace_name"].astype(str).tolist()
    events = metadata["source_id"].tolist() if "source_id" in metadata.columns else [None] * len(names)
    return np.array([f"trace:{n}" if pd.isna(e) else f"event:{e}" for n, e in zip(names, events)], dtype=object)


def select_label_fraction(metadata: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Mask of the ``train`` traces with picks that keep their analyst picks (see the module docstring).

    Events are taken in the order of a permutation seeded by ``seed`` over the sorted event keys until the
    selected traces reach ``fraction`` of the candidate traces (at least one event).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    cols = list(pick_columns(metadata.columns))
    has_pick = metadata[cols].notna().any(axis=1).to_numpy() if cols else np.zeros(len(metadata), bool)
    candidates = (metadata["split"] == "train").to_numpy() & has_pick
    if fraction >= 1:
        return candidates
    keys = event_keys(metadata)
    uniq = sorted(set(keys[candidates]))
    if not uniq:
        return candidates
    counts = pd.Series(keys[candidates]).value_counts()
    order = np.random.default_rng(seed).permutation(len(uniq))
    target = fraction * candidates.sum()
    chosen, total = set(), 0
    for j in order:
        if chosen and total >= target:
            break
        chosen.add(uniq[j])
        total += int(counts[uniq[j]])
    return candidates & np.array([k in chosen for k in keys])


class SeededWindows(torch.utils.data.Dataset):
    """``n`` windows of a generator, item ``i`` drawn with NumPy's global RNG seeded by ``(seed, i)`` (the same
    windows at every validation)."""

    def __init__(self, generator, n: int, seed: int):
        self.generator, self.n, self.seed = generator, int(n), int(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        state = np.random.get_state()
        np.random.seed(int(np.random.SeedSequence([self.seed, i]).generate_state(1)[0]))
        try:
            return self.generator[i % len(self.generator)]
        finally:
            np.random.set_state(state)


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FinetuneData:
    """All data of a run (see the module docstring). Call :meth:`prepare` once."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.arch = str(cfg.model.arch)
        self.spec = ARCH_SPECS[self.arch]
        self.info: dict = {}
        self._teachers = None

    # ------------------------------------------------------------------ sources
    def pseudo_config(self) -> PseudoLabelConfig:
        p = self.cfg.pseudo
        return PseudoLabelConfig(
            teachers=tuple(p.teachers), P_threshold=float(p.P_threshold), S_threshold=float(p.S_threshold),
            analyst_tolerance=float(p.analyst_tolerance), cache_root=p.teacher_cache, chunk_len=int(p.chunk_len),
            min_chunk_len=max(ARCH_SPECS[a].window_len for a in ARCH_SPECS), train_fraction=float(p.train_fraction),
        )

    def teachers(self):
        if self._teachers is None:
            self._teachers = load_teachers(self.pseudo_config())
        return self._teachers

    def cache_dir(self) -> Path:
        return Path(self.cfg.data.cache_dir) if self.cfg.data.cache_dir else default_ingest_cache()

    def dataset_paths(self) -> list[str]:
        paths = [str(p) for p in self.cfg.data.datasets]
        paths += [str(ingest_cached(s, self.cfg.data.cache_dir)) for s in self.cfg.data.ingest]
        if not paths:
            raise ValueError("No labelled data: set data.datasets and/or data.ingest")
        return paths

    def _labelled(self, path: str):
        """One labelled dataset with the label fraction applied and teacher picks added (train rows)."""
        cfg, p = self.cfg, self.cfg.pseudo
        ds = open_dataset(path)
        assign_splits(ds, seed=int(cfg.seed))
        md = ds.metadata
        keep_labels = select_label_fraction(md, float(cfg.data.label_fraction), int(cfg.seed))
        train = (md["split"] == "train").to_numpy()
        cols = list(pick_columns(md.columns))
        has_pick = md[cols].notna().any(axis=1).to_numpy() if cols else np.zeros(len(md), bool)
        unselected = train & has_pick & ~keep_labels
        info = {"path": path, "train": int(train.sum()), "dev": int((md["split"] == "dev").sum()),
                "labelled_train": int(keep_labels.sum()), "unlabelled_train": 0}
        if unselected.any():
            if p.unlabelled_traces:
                md.loc[unselected, cols] = np.nan  # teacher picks only
                info["unlabelled_train"] = int(unselected.sum())
            else:
                ds.filter(~unselected, inplace=True)
        if p.labelled:
            md = ds.metadata
            rows = np.nonzero((md["split"] == "train").to_numpy())[0]
            key = _key({"path": str(Path(path).resolve()), "rows": md["trace_name"].iloc[rows].tolist(),
                        "picks": md[cols].iloc[rows].to_numpy().tolist(), "config": self.pseudo_config().to_dict()})
            cache = self.cache_dir() / "pseudo" / f"labelled-{key}.csv"
            if cache.is_file():
                frame = pd.read_csv(cache, index_col=0)
            else:
                frame = pseudo_picks_for_traces(self.teachers(), dataset_traces(ds, rows), self.pseudo_config())
                cache.parent.mkdir(parents=True, exist_ok=True)
                frame.to_csv(cache)
            add_pseudo_columns(ds, frame)
            info["teacher_picks"] = {ph: int(sum(frame[c].notna().sum() for c in frame.columns
                                                 if pseudo_pick_columns([c]).get(c) == ph)) for ph in "PS"}
        return ds, info

    def _continuous(self):
        p = self.cfg.pseudo
        config = self.pseudo_config()
        key = _key({"records": [str(Path(r).resolve()) for r in p.continuous], "config": config.to_dict()})
        folder = self.cache_dir() / "pseudo" / f"continuous-{key}"
        summary_file = folder / "pseudolabels.json"
        if not summary_file.is_file():
            summary = write_continuous_dataset(list(p.continuous), folder, config, teachers=self.teachers())
        else:
            summary = json.loads(summary_file.read_text())
        return open_dataset(folder), {"path": str(folder), "chunks": summary["chunks"], "picks": summary["picks"],
                                      "cut": summary["cut"], "records": list(p.continuous)}

    # ------------------------------------------------------------------ generators
    def picking_config(self, extra: dict[str, str]) -> PickingConfig:
        d = self.cfg.data
        a = d.augment
        augment = AugmentationConfig(
            gaussian_noise_p=a.gaussian_noise_p, gaussian_noise_scale=tuple(a.gaussian_noise_scale), gap_p=a.gap_p,
            channel_dropout_p=a.channel_dropout_p, amplitude_scale_p=a.amplitude_scale_p,
            amplitude_scale_range=tuple(a.amplitude_scale_range), superposition_p=a.superposition_p,
            superposition_scale=tuple(a.superposition_scale),
        )
        return PickingConfig(window_len=self.spec.window_len, sigma=float(d.sigma),
                             noise_window_p=float(d.noise_window_p),
                             normalize=NormalizeConfig(amp_norm_type=self.spec.norm), augment=augment,
                             extra_pick_columns=dict(extra))

    def _generator(self, mixed, extra: dict[str, str], train: bool):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="noise windows:")
            gen = picking_generator(mixed, self.picking_config(extra), train=train)
        if self.arch == "eqtransformer":
            gen.add_augmentations([EventDetectionTarget(label_columns_for(gen.dataset, extra))])
        return gen

    def prepare(self) -> "FinetuneData":
        cfg = self.cfg
        labelled, infos = [], []
        for path in self.dataset_paths():
            ds, info = self._labelled(path)
            labelled.append(ds)
            infos.append(info)
        inputs, weights = list(labelled), None
        self.info = {"labelled": infos, "label_fraction": float(cfg.data.label_fraction)}
        if cfg.pseudo.continuous and float(cfg.pseudo.weight) > 0:
            cont, cinfo = self._continuous()
            self.info["continuous"] = cinfo
            inputs.append(cont)
            n = np.array([float((d.metadata["split"] == "train").sum()) for d in labelled])
            w = float(cfg.pseudo.weight)
            weights = list((1 - w) * n / n.sum()) + [w]
        self.info["teachers"] = list(cfg.pseudo.teachers) if (cfg.pseudo.labelled or "continuous" in self.info) else []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="mix_datasets:")
            self.mixed = mix_datasets(inputs, weights=weights, seed=int(cfg.seed), min_samples=self.spec.window_len)
        self.extra = pseudo_pick_columns(self.mixed.dataset.metadata.columns)
        self.train_gen = self._generator(self.mixed.train(), self.extra, train=True)
        dev = self.mixed.dev()
        if len(dev) == 0:
            raise ValueError("The labelled datasets have no dev split: model selection needs one")
        self.dev_gen = self._generator(dev, self.extra, train=False)
        n_dev = len(dev.dataset)
        limit = cfg.selection.dev_traces
        indices = range(n_dev) if limit is None else np.linspace(0, n_dev - 1, min(int(limit), n_dev)).astype(int)
        self.dev_traces = dataset_traces(dev.dataset, indices)
        self.info["train_traces"] = len(self.train_gen)
        self.info["dev_traces"] = len(self.dev_traces.trace_ids)
        self.info["dev_picks"] = {ph: sum(map(len, v.values())) for ph, v in self.dev_traces.reference.items()}
        return self

    def summary(self) -> str:
        parts = []
        for i in self.info["labelled"]:
            text = f"{Path(i['path']).name}: {i['labelled_train']} labelled train traces"
            if i["unlabelled_train"]:
                text += f" + {i['unlabelled_train']} teacher-only"
            if "teacher_picks" in i:
                text += f", teacher picks P {i['teacher_picks']['P']} S {i['teacher_picks']['S']}"
            parts.append(text + f", {i['dev']} dev")
        if "continuous" in self.info:
            c = self.info["continuous"]
            parts.append(f"continuous: {c['chunks']['train']} train chunks, teacher picks P {c['picks']['train_P']} "
                         f"S {c['picks']['train_S']} (weight {self.cfg.pseudo.weight})")
        return "; ".join(parts)


class FinetuneDataModule(L.LightningDataModule):
    """Lightning data module around :class:`FinetuneData` (prepared by the caller)."""

    def __init__(self, data: FinetuneData):
        super().__init__()
        self.data = data
        d = data.cfg.data
        self.batch_size = int(d.batch_size)
        self.workers = d.num_workers if d.num_workers is not None else default_num_workers()
        self.windows_per_epoch = int(d.windows_per_epoch or len(data.train_gen))
        if self.windows_per_epoch < self.batch_size:
            raise ValueError(f"{self.windows_per_epoch} windows per epoch do not fill one batch of {self.batch_size}")
        self.val_set = SeededWindows(data.dev_gen, int(d.val_windows or len(data.dev_gen)), int(data.cfg.seed))

    def train_dataloader(self):
        gen = self.data.train_gen
        sampler = gen.mixed.sampler(self.windows_per_epoch)
        return make_loader(gen, batch_size=self.batch_size, num_workers=self.workers, sampler=sampler,
                           pin_memory=torch.cuda.is_available())

    def val_dataloader(self):
        return make_loader(self.val_set, batch_size=self.batch_size, num_workers=self.workers, shuffle=False,
                           drop_last=False, pin_memory=torch.cuda.is_available())
