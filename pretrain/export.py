"""Export of a pretrained backbone, and pickers built on it.

The export file (``torch.save`` of a dict, loadable with ``weights_only=True``) holds::

    {"format": "seisbench_xlstm.pretrained_backbone", "version": 1,
     "backbone": "sequential" | "unet", "config": <backbone config dict>,
     "state_dict": <backbone state dict>, "recipe": <recipe name>, "global_step": <int>}

:func:`build_picker` builds an ``XLSTMSeqPicker`` / ``XLSTMUNetPicker`` with that backbone (the picking head stays
freshly initialised, for fine-tuning). Command line: ``python -m pretrain.export CHECKPOINT.ckpt OUT.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from seisbench_xlstm import PICKERS, build_backbone

__all__ = ["FORMAT", "export_backbone", "export_from_checkpoint", "load_backbone", "build_picker"]

FORMAT = "seisbench_xlstm.pretrained_backbone"


def export_backbone(module, path: str | Path, global_step: int | None = None) -> Path:
    """Writes the backbone of a :class:`~pretrain.module.PretrainModule` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = module.backbone
    payload = {
        "format": FORMAT,
        "version": 1,
        "backbone": module.backbone_name,
        "config": backbone.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()},
        "recipe": type(module.recipe).__name__,
        "global_step": int(module.global_step if global_step is None else global_step),
    }
    torch.save(payload, path)
    return path


def export_from_checkpoint(checkpoint: str | Path, path: str | Path) -> Path:
    """Exports the backbone of a Lightning checkpoint of a pretraining run."""
    from .module import PretrainModule

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    module = PretrainModule(ckpt["hyper_parameters"]["config"])
    module.load_state_dict(ckpt["state_dict"])
    return export_backbone(module, path, global_step=int(ckpt.get("global_step", 0)))


def _read(path: str | Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pretrained-backbone export (expected format {FORMAT!r})")
    return payload


def load_backbone(path: str | Path):
    """The exported backbone as a module (``build_backbone`` + its weights)."""
    payload = _read(path)
    backbone = build_backbone(payload["backbone"], payload["config"])
    backbone.load_state_dict(payload["state_dict"])
    return backbone


def build_picker(path: str | Path, **picker_kwargs):
    """An ``XLSTMSeqPicker`` or ``XLSTMUNetPicker`` (chosen by the export) whose backbone holds the pretrained
    weights. ``picker_kwargs`` go to the picker (``phases``, ``norm``, ...)."""
    payload = _read(path)
    picker = PICKERS[payload["backbone"]](backbone_config=payload["config"], **picker_kwargs)
    picker.backbone.load_state_dict(payload["state_dict"])
    return picker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Lightning checkpoint of a pretraining run (.ckpt)")
    parser.add_argument("out", help="export file to write (.pt)")
    args = parser.parse_args(argv)
    print(export_from_checkpoint(args.checkpoint, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
