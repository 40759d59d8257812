"""``python -m pretrain experiment=<name> [key=value ...]``: run a pretraining experiment (see docs/pretrain.md).

Options: ``--print-config`` prints the composed config and exits; ``--help`` lists the experiments.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from experiments import run_command
    from seisbench_xlstm.data import DatasetNotAvailableError

    from .config import UnknownConfigKeyError, compose_config, list_experiments
    from .module import NonFiniteLossError
    from .train import run

    return run_command(
        argv, __doc__, "python -m pretrain experiment=contrastive/xlstm_unet_local trainer.max_steps=200",
        list_experiments, compose_config, run,
        config_errors=(UnknownConfigKeyError,),
        run_errors={DatasetNotAvailableError: 2, NonFiniteLossError: 3},
    )


if __name__ == "__main__":
    raise SystemExit(main())
