"""``python -m finetune experiment=<name> [key=value ...]``: fine-tune a picker (see docs/finetune.md).

Options: ``--print-config`` prints the composed config and exits; ``--help`` lists the experiments.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from experiments import run_command
    from seisbench_xlstm.data import DatasetNotAvailableError
    from seisbench_xlstm.pseudolabels import TeacherNotAvailableError

    from .config import UnknownConfigKeyError, compose_config, list_experiments
    from .export import ExportCheckError
    from .module import NonFiniteLossError
    from .train import run

    return run_command(
        argv, __doc__,
        "python -m finetune experiment=local/xlstm_seq model.pretrained=runs/.../backbone.pt "
        "pseudo.teacher_cache=~/.seisbench-baselines",
        list_experiments, compose_config, run,
        config_errors=(UnknownConfigKeyError, ValueError),
        run_errors={DatasetNotAvailableError: 2, TeacherNotAvailableError: 2, NonFiniteLossError: 3,
                    ExportCheckError: 3},
    )


if __name__ == "__main__":
    raise SystemExit(main())
