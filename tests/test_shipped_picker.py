"""The picker that ships with the package: offline loading, its metadata, and picks on ObsPy's example record."""

import obspy
import pytest

from seisbench_xlstm import XLSTMUNetPicker
from seisbench_xlstm.pickers import SHIPPED_PICKER, load_picker
from seisbench_xlstm.weight_lookup import PACKAGE_WEIGHTS_ROOT

BACKBONE, NAME = SHIPPED_PICKER


@pytest.fixture(scope="module")
def shipped():
    return XLSTMUNetPicker.from_pretrained(NAME)


def test_shipped_weights_fit_the_package_budget():
    files = sorted((PACKAGE_WEIGHTS_ROOT / "xlstmunetpicker").glob(f"{NAME}.*"))
    assert [f.name for f in files] == [f"{NAME}.json.v1", f"{NAME}.pt.v1"]
    assert sum(f.stat().st_size for f in files) < 25e6


def test_loads_offline_with_tuned_thresholds_and_a_docstring_that_says_how_it_was_made(shipped):
    assert NAME in XLSTMUNetPicker.list_pretrained()
    assert 0 < shipped.default_args["P_threshold"] < 1 and 0 < shipped.default_args["S_threshold"] < 1
    doc = shipped.weights_docstring
    for needed in ("ncedc154", "nz-dfdp", "DISTILLATION", "PhaseNet", "EQTransformer", "normalisation"):
        assert needed in doc


def test_load_picker_finds_the_class_of_a_name():
    assert isinstance(load_picker(NAME), XLSTMUNetPicker)
    with pytest.raises(ValueError, match="no picker has offline weights named 'nope'"):
        load_picker("nope")


def test_picks_the_example_earthquake_where_an_analyst_does():
    """``obspy.read()`` (BW.RJOB, 30 s): P onset at 00:20:07.73 on all components, S on the horizontals at
    about 08.75 (read off the record by eye; SeisBench's PhaseNet and EQTransformer return no picks for this
    3000-sample record)."""
    model = XLSTMUNetPicker.from_pretrained(NAME)
    picks = model.classify(obspy.read()).picks
    by_phase = {p.phase: p.peak_time for p in picks}
    assert sorted(by_phase) == ["P", "S"] and len(picks) == 2
    assert abs(by_phase["P"] - obspy.UTCDateTime("2009-08-24T00:20:07.73")) < 0.15
    assert abs(by_phase["S"] - obspy.UTCDateTime("2009-08-24T00:20:08.75")) < 0.25
