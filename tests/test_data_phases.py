"""The one mapping from SeisBench pick columns / catalogue phase hints to P and S."""

import numpy as np
import pytest

from seisbench_xlstm.data import PHASE_MAP, PICK_COLUMN_MAP, phase_of_column, phase_of_hint, pick_columns
from seisbench_xlstm.data.phases import pick_column

# Every spelling the issue names, plus those the eight datasets use.
P_COLUMNS = [
    "trace_p_arrival_sample",  # STEAD, NCEDC/PhaseNet
    "trace_P_arrival_sample",  # INSTANCE, PNW, Iquique, OBST2024, ETHZ, GEOFON
    "trace_P1_arrival_sample",  # ETHZ
    "trace_P2_arrival_sample",
    "trace_Pg_arrival_sample",
    "trace_Pn_arrival_sample",
    "trace_Pb_arrival_sample",
    "trace_P*_arrival_sample",
    "trace_PmP_arrival_sample",
    "trace_pP_arrival_sample",  # depth phase, P as in the SeisBench pick benchmark
    "trace_pwP_arrival_sample",
    "trace_pwPm_arrival_sample",
]
S_COLUMNS = [
    "trace_s_arrival_sample",
    "trace_S_arrival_sample",
    "trace_S1_arrival_sample",
    "trace_S2_arrival_sample",
    "trace_Sg_arrival_sample",
    "trace_Sn_arrival_sample",
    "trace_Sb_arrival_sample",
    "trace_S*_arrival_sample",
    "trace_SmS_arrival_sample",
]
UNMAPPED = [
    "trace_PKP_arrival_sample",
    "trace_PKiKP_arrival_sample",
    "trace_PcP_arrival_sample",
    "trace_PP_arrival_sample",  # surface reflection, not pP
    "trace_SS_arrival_sample",
    "trace_sP_arrival_sample",
    "trace_ScS_arrival_sample",
    "trace_SKS_arrival_sample",
    "trace_IAML_arrival_sample",
    "trace_p_status",
    "trace_P_polarity",
    "source_id",
    "trace_Pg_arrival_time",
]


@pytest.mark.parametrize("column", P_COLUMNS)
def test_p_spellings(column):
    assert phase_of_column(column) == "P"
    assert PICK_COLUMN_MAP[column] == "P"


@pytest.mark.parametrize("column", S_COLUMNS)
def test_s_spellings(column):
    assert phase_of_column(column) == "S"
    assert PICK_COLUMN_MAP[column] == "S"


@pytest.mark.parametrize("column", UNMAPPED)
def test_other_columns_are_not_mapped(column):
    assert phase_of_column(column) is None
    assert column not in PICK_COLUMN_MAP


def test_map_is_complete_and_consistent():
    assert set(PICK_COLUMN_MAP) == set(P_COLUMNS) | set(S_COLUMNS)
    for phase, label in PHASE_MAP.items():
        assert PICK_COLUMN_MAP[pick_column(phase)] == label


@pytest.mark.parametrize(
    "hint,label",
    [("P", "P"), ("Pg", "P"), ("PG", "P"), ("PN", "P"), (" pP ", "P"), ("S", "S"), ("SG", "S"), ("sn", "S"),
     ("SMS", "S"), ("IAML", None), ("PP", None), ("AML", None), ("", None), (None, None), ("PKP", None)],
)
def test_catalogue_hints(hint, label):
    assert phase_of_hint(hint) == label


def test_pick_columns_selects_and_extends():
    cols = ["trace_name", "trace_Pg_arrival_sample", "trace_Sn_arrival_sample", "trace_PKP_arrival_sample",
            "trace_mine_arrival_sample"]
    assert pick_columns(cols) == {"trace_Pg_arrival_sample": "P", "trace_Sn_arrival_sample": "S"}
    ext = pick_columns(cols, extra={"trace_mine_arrival_sample": "S"})
    assert ext["trace_mine_arrival_sample"] == "S"
    with pytest.raises(ValueError):
        pick_columns(cols, extra={"trace_mine_arrival_sample": "X"})


def test_labeller_uses_every_spelling():
    """Each spelling, fed through SeisBench's ProbabilisticLabeller with the map, lands in the right row."""
    import seisbench.generate as sbg

    from seisbench_xlstm.data.generators import MODEL_LABELS

    for column in P_COLUMNS + S_COLUMNS:
        labeller = sbg.ProbabilisticLabeller(label_columns=PICK_COLUMN_MAP, model_labels=MODEL_LABELS, sigma=10, dim=0)
        state = {"X": (np.zeros((3, 1000), dtype=np.float32), {column: 500.0})}
        labeller(state)
        y = state["y"][0]
        row = "PSN".index(PICK_COLUMN_MAP[column])
        assert y.shape == (3, 1000)
        assert y[row, 500] == pytest.approx(1.0)
        np.testing.assert_allclose(y.sum(axis=0), 1.0, atol=1e-6)
