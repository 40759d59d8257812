"""The pickers' ``annotate``/``classify`` arguments: defaults, documentation and up-front validation.

SeisBench checks most arguments deep inside its asynchronous pipeline, where a bad value either hangs the call
(``batch_size=0``, ``overlap=4096``, ``stacking="median"``, ``blinding=100``), is silently ignored
(``p_threshold``) or gives empty output (``overlap=5000``). :func:`validate_annotate_args` checks all of them
before any work starts and raises ``ValueError`` with the valid choices.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

import numpy as np
from seisbench.models import WaveformModel

#: SeisBench's arguments that apply to these pickers (``stride`` is for point-prediction models only).
_SEISBENCH_ARGS = (
    "batch_size", "overlap", "stacking", "strict", "flexible_horizontal_components", "zerophase_resample",
)


def picker_annotate_args() -> dict[str, tuple[str, Any]]:
    """``name -> (documentation, default)`` of every annotate/classify argument of the pickers."""
    args = {k: WaveformModel._annotate_args[k] for k in _SEISBENCH_ARGS}
    # 512 is the least overlap that covers every sample with the default blinding; more overlap averages more
    # predictions per sample at proportionally more windows (benchmarks/results/annotate_*.md).
    args["overlap"] = (
        "Overlap of consecutive windows in samples (or, below 1, as a fraction of the window). At least "
        "sum(blinding), so that every sample is predicted, and less than the window length.",
        512,
    )
    args["*_threshold"] = ("Pick threshold of the phase (trigger on at it, off at half of it), in (0, 1]", 0.3)
    args["detection_threshold"] = ("Threshold on 1 - noise probability for detections, in (0, 1]", 0.3)
    args["blinding"] = (
        "Samples discarded at the start and end of each window prediction, (pre, post). The outer edge of the "
        "first and last window of each contiguous record is never discarded, so a record is annotated from its "
        "first to its last sample.",
        (256, 256),
    )
    args["nan_policy"] = (
        "NaN/inf samples: 'raise' (ValueError naming the traces) or 'gap' (cut them out; they become gaps). "
        "Masked samples (from Stream.merge) are always gaps.",
        "raise",
    )
    args["prepared"] = (
        "True when the stream was already prepared with the picker's annotate_stream_pre (segments demeaned, "
        "filtered, resampled): annotate then skips these steps. Used to annotate a long record in aligned pieces.",
        False,
    )
    return args


#: Accepted for compatibility and ignored (SeisBench itself warns that it is deprecated).
_IGNORED_ARGS = ("parallelism",)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def overlap_in_samples(overlap, in_samples: int) -> int:
    """SeisBench's rule: values below 1 are fractions of the window, others sample counts."""
    return int(overlap * in_samples) if overlap < 1 else int(overlap)


def validate_annotate_args(
    argdict: dict[str, Any],
    defaults: dict[str, tuple[str, Any]],
    in_samples: int,
    phases: Iterable[str],
    stack_options: Iterable[str],
) -> None:
    """Raises ``ValueError`` for any unknown or invalid argument, before annotate starts.

    :param argdict: the arguments as annotate/classify will use them (model default_args updated by kwargs)
    :param defaults: :func:`picker_annotate_args` of the model
    :param in_samples: window length in samples
    :param phases: output labels; thresholds exist for every label except noise ("N")
    :param stack_options: SeisBench's stacking methods
    """
    thresholds = [f"{p}_threshold" for p in phases if p != "N"]
    valid = sorted([k for k in defaults if "*" not in k] + thresholds)
    unknown = sorted(k for k in argdict if k not in valid and k not in _IGNORED_ARGS)
    if unknown:
        raise ValueError(f"Unknown annotate/classify argument(s) {unknown}. Valid arguments: {valid}.")

    def get(key):
        return argdict.get(key, defaults[key][1])

    batch_size = get("batch_size")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")

    blinding = get("blinding")
    if (
        not isinstance(blinding, (tuple, list))
        or len(blinding) != 2
        or not all(_is_int(b) and b >= 0 for b in blinding)
    ):
        raise ValueError(f"blinding must be a pair (pre, post) of integers >= 0, got {blinding!r}.")
    least = int(blinding[0]) + int(blinding[1])

    overlap = get("overlap")
    if not _is_real(overlap) or overlap < 0 or (overlap >= 1 and overlap != int(overlap)):
        raise ValueError(
            f"overlap must be a whole number of samples, or a fraction in [0, 1) of the window, got {overlap!r}."
        )
    samples = overlap_in_samples(overlap, in_samples)
    if samples >= in_samples:
        raise ValueError(
            f"overlap={overlap!r} ({samples} samples) must be less than the window length ({in_samples} samples): "
            f"consecutive windows would not advance. The least overlap that covers every sample with "
            f"blinding={tuple(blinding)} is {least}."
        )
    if samples < least:
        raise ValueError(
            f"overlap={overlap!r} ({samples} samples) leaves samples unannotated: each window discards "
            f"blinding={tuple(blinding)} samples, so the least overlap that covers every sample is {least}. "
            f"Pass overlap={least} or more (or a smaller blinding)."
        )

    stacking = get("stacking")
    options = sorted(stack_options)
    if not isinstance(stacking, str) or stacking.lower() not in options:
        raise ValueError(f"stacking must be one of {options}, got {stacking!r}.")

    for key in ("strict", "flexible_horizontal_components", "zerophase_resample", "prepared"):
        if not _is_bool(get(key)):
            raise ValueError(f"{key} must be True or False, got {get(key)!r}.")

    for key in thresholds + ["detection_threshold"]:
        value = argdict.get(key, defaults["*_threshold" if key in thresholds else key][1])
        if not _is_real(value) or not 0 < value <= 1:
            raise ValueError(f"{key} must be a number in (0, 1], got {value!r}.")

    policy = get("nan_policy")
    if policy not in ("raise", "gap"):
        raise ValueError(f"nan_policy must be 'raise' or 'gap', got {policy!r}.")
