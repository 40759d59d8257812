"""``python -m finetune experiment=<name> [key=value ...]``: fine-tune a picker (see docs/finetune.md).

Options: ``--print-config`` prints the composed config and exits; ``--help`` lists the experiments.
"""

from __future__ import annotations

import sys

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def _chain(err: BaseException) -> str:
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err).strip()
        if text and text not in parts:
            parts.append(text)
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    from .config import UnknownConfigKeyError, compose_config, list_experiments

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        print("\nExperiments:\n  " + "\n  ".join(list_experiments()))
        print("\nExample: python -m finetune experiment=local/xlstm_seq model.pretrained=runs/.../backbone.pt "
              "pseudo.teacher_cache=~/.seisbench-baselines")
        return 0
    print_config = "--print-config" in argv
    argv = [a for a in argv if a != "--print-config"]
    try:
        cfg = compose_config(argv)
    except (UnknownConfigKeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as err:
        message = _chain(err)
        if "experiment/" in message:
            message += "\nAvailable experiments: " + ", ".join(list_experiments())
        print(f"error: {message}", file=sys.stderr)
        return 2
    if print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0

    from seisbench_xlstm.data import DatasetNotAvailableError
    from seisbench_xlstm.pseudolabels import TeacherNotAvailableError

    from .export import ExportCheckError
    from .module import NonFiniteLossError
    from .train import run

    try:
        run(cfg)
    except (DatasetNotAvailableError, TeacherNotAvailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, ExportCheckError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
