"""A pretraining run that records what every rank trained on (used by tests/test_pretrain_ddp.py).

``python tests/ddp_run.py RECORD_DIR KEY=VALUE ...`` composes the run config from the overrides
(as ``python -m pretrain`` does) and runs :func:`pretrain.train.run` with a :class:`Recorder`. With
``trainer.devices=2 trainer.strategy=ddp`` Lightning starts the second process itself by running this script
again (the launcher ``python -m pretrain`` uses). Each rank writes ``RECORD_DIR/rank<r>.pt``: the
``(epoch, position, index)`` keys of every training window it trained on, its own loss per step, a checksum of its
weights after every step and its final state dict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.config import compose_config  # noqa: E402
from pretrain.train import run  # noqa: E402


class Recorder(L.Callback):
    def __init__(self, out: Path):
        self.out = Path(out)
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        keys = torch.stack([batch["epoch"], batch["position"], batch["index"]], dim=1).tolist()
        checksum = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
        self.steps.append({"step": trainer.global_step, "keys": keys, "loss": float(outputs["loss"]),
                           "checksum": checksum})

    def on_fit_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": self.steps, "state": state}
        torch.save(record, self.out / f"rank{trainer.global_rank}.pt")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record_dir", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run(compose_config(args.overrides), extra_callbacks=[Recorder(args.record_dir)])


if __name__ == "__main__":
    main()
