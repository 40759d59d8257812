"""One mapping from the many SeisBench pick columns (and catalogue phase hints) to P and S.

SeisBench datasets store picks as ``trace_<PHASE>_arrival_sample`` columns, where ``<PHASE>`` is whatever
phase hint the source catalogue used: ``p``/``s`` (STEAD, NCEDC/PhaseNet), ``P``/``S`` (INSTANCE, PNW,
Iquique, OBST2024), ``P1``, ``Pg``, ``Pn``, ``PmP``, ``pP``, ``Sg``, ``Sn``, ``SmS`` ... (ETHZ, GEOFON,
MLAAPDE). The pickers of this package predict two phase classes, P and S (plus Noise), so every spelling
is folded into one of them here, and nowhere else.

Rules (documented in docs/data.md):

* Direct, refracted and Moho-reflected crustal phases (``P``, ``p``, ``P1``, ``P2``, ``Pg``, ``Pn``, ``Pb``,
  ``P*``, ``PmP``) are P; likewise for S (``S``, ``s``, ``S1``, ``S2``, ``Sg``, ``Sn``, ``Sb``, ``S*``,
  ``SmS``).
* The depth phases ``pP``, ``pwP`` and ``pwPm`` are P, as in the SeisBench pick benchmark
  (Münchmeyer et al., 2022): they are P-type onsets a picker should mark.
* Everything else (core phases ``PKP``/``PKiKP``/``PcP``, surface reflections ``PP``/``SS``, converted
  ``sP``/``ScS``/``SKS``, amplitude readings such as ``IAML``, coda ends ...) is **not** mapped and is
  ignored for labelling, because labelling it as first-arrival P or S would teach a regional picker
  wrong onsets.

Matching of columns is case-sensitive (``pP`` is a depth phase, ``PP`` is not), with the one documented
exception that a bare ``p``/``s`` means P/S (STEAD's spelling). For catalogue phase hints (ingest),
:func:`phase_of_hint` additionally accepts unambiguous upper-case spellings such as ``PG``/``SN``
(SEISAN writes those).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = [
    "PHASE_MAP",
    "PICK_COLUMN_MAP",
    "phase_of_column",
    "phase_of_hint",
    "pick_columns",
    "pick_column",
]

_P_PHASES = ("P", "p", "P1", "P2", "Pg", "Pn", "Pb", "P*", "PmP", "pP", "pwP", "pwPm")
_S_PHASES = ("S", "s", "S1", "S2", "Sg", "Sn", "Sb", "S*", "SmS")

#: Phase name (as in the catalogue / column) -> "P" or "S".
PHASE_MAP: dict[str, str] = {**{p: "P" for p in _P_PHASES}, **{s: "S" for s in _S_PHASES}}

#: Metadata column -> "P" or "S", for every spelling in :data:`PHASE_MAP`.
#: Pass it (or the subset returned by :func:`pick_columns`) as ``label_columns`` to
#: ``seisbench.generate.ProbabilisticLabeller``.
PICK_COLUMN_MAP: dict[str, str] = {
    f"trace_{phase}_arrival_sample": label for phase, label in PHASE_MAP.items()
}

_COLUMN_RE = re.compile(r"^trace_(?P<phase>.+)_arrival_sample$")

# Upper-case catalogue spellings that are unambiguous ("PP" and "SS" are not: pP vs PP).
_CASEFOLD: dict[str, str] = {}
for _phase, _label in PHASE_MAP.items():
    _key = _phase.upper()
    if _key in ("PP", "SS"):
        continue
    _CASEFOLD.setdefault(_key, _label)


def phase_of_column(column: str) -> str | None:
    """Return ``"P"``, ``"S"`` or ``None`` for a metadata column name.

    >>> phase_of_column("trace_Pg_arrival_sample")
    'P'
    >>> phase_of_column("trace_s_arrival_sample")
    'S'
    >>> phase_of_column("trace_PKP_arrival_sample") is None
    True
    """
    m = _COLUMN_RE.match(column)
    if m is None:
        return None
    return PHASE_MAP.get(m.group("phase"))


def phase_of_hint(hint: str | None) -> str | None:
    """Return ``"P"``, ``"S"`` or ``None`` for a catalogue phase hint (QuakeML/Nordic/CSV).

    Leading onset letters from Nordic (``IP``, ``EPg``) are expected to be stripped already
    (ObsPy does this); surrounding blanks are ignored; ``PG``/``SN`` style upper-case spellings are accepted.
    """
    if hint is None:
        return None
    hint = str(hint).strip()
    if not hint:
        return None
    if hint in PHASE_MAP:
        return PHASE_MAP[hint]
    return _CASEFOLD.get(hint.upper())


def pick_column(phase: str) -> str:
    """Column name used for a phase name: ``pick_column("Pg") == "trace_Pg_arrival_sample"``."""
    return f"trace_{phase}_arrival_sample"


def pick_columns(
    columns: Iterable[str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Select the pick columns among ``columns`` that map to P or S.

    :param columns: metadata column names (e.g. ``dataset.metadata.columns``).
    :param extra: optional additional ``{column: "P"|"S"}`` entries (override the built-in map).
    :return: ``{column: "P"|"S"}`` in the order of ``columns``.
    """
    extra = dict(extra or {})
    for label in extra.values():
        if label not in ("P", "S"):
            raise ValueError(f"extra pick columns must map to 'P' or 'S', got {label!r}")
    out = {}
    for col in columns:
        label = extra.get(col) or phase_of_column(col)
        if label is not None:
            out[col] = label
    return out
