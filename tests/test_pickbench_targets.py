"""Pick-benchmark targets and predictions (seisbench_xlstm.pickbench) on synthetic datasets with known answers."""

import numpy as np
import pandas as pd
import pytest
import seisbench.data as sbd
import torch

from seisbench_xlstm import XLSTMSeqPicker
from seisbench_xlstm.data import open_dataset
from seisbench_xlstm.pickbench import (
    TargetsConfig,
    load_targets,
    make_targets,
    predict_targets,
    save_targets,
    select_window,
    task23_targets,
    task_scores,
    trace_arrivals,
)
from tiny import TINY_SEQUENTIAL


def test_select_window_bounds_are_inclusive():
    rng = np.random.default_rng(0)
    # the pick 50 samples inside at both ends: exactly one position
    assert select_window(rng, 1000, 100, containing=50, bounds=(50, 50)) == (0, 100)
    assert select_window(rng, 1000, 100, containing=49, bounds=(50, 50)) is None
    assert select_window(rng, 100, 100, containing=50, bounds=(50, 50)) == (0, 100)
    assert select_window(rng, 99, 100) is None  # shorter than a window
    starts = {select_window(rng, 1000, 200, containing=500, bounds=(50, 50))[0] for _ in range(3000)}
    assert starts == set(range(350, 451))  # every start from 350 to 450, and only those
    with pytest.raises(ValueError):
        select_window(rng, 10, 0)


def write_dataset(path, traces, npts=9000):
    """traces: list of (split, P sample or None, S sample or None); Gaussian noise with a P spike (on Z) and an
    S spike (on N) placed by ``spikes`` offsets stored in the metadata for the tests."""
    rng = np.random.default_rng(1)
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as w:
        w.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": 100}
        for k, (split, p, s, dp, ds_) in enumerate(traces):
            x = rng.normal(size=(3, npts)).astype(np.float32)
            if p is not None:
                x[0, int(p + dp)] += 60
            if s is not None:
                x[1, int(s + ds_)] += 60
            w.add_trace({"trace_name": f"t{k}", "trace_sampling_rate_hz": 100.0, "split": split,
                         "trace_p_arrival_sample": np.nan if p is None else p,
                         "trace_s_arrival_sample": np.nan if s is None else s}, x)
    return open_dataset(path)


class ChannelSpikePicker(XLSTMSeqPicker):
    """P = 0.9 where the normalised Z channel exceeds 8 (else 0.05), S likewise on N; noise the rest. It finds
    Z and N through its own ``component_order``, so a wrong channel order gives wrong picks."""

    def __init__(self, **kwargs):
        super().__init__(backbone_config=TINY_SEQUENTIAL, **kwargs)

    def forward(self, x, logits=False):
        z, n = self.component_order.index("Z"), self.component_order.index("N")
        p = torch.where(x[:, z].abs() > 8, 0.9, 0.05)
        s = torch.where(x[:, n].abs() > 8, 0.9, 0.05)
        return torch.stack([p, s, 1 - p - s], dim=1)


@pytest.fixture
def spiky(tmp_path):
    traces = []
    for k in range(12):
        split = ("dev", "test", "train")[k % 3]
        traces.append((split, 3500.0 + 10 * k, 4700.0 + 10 * k, 30, -20))  # P 0.3 s late, S 0.2 s early
    traces.append(("test", None, None, 0, 0))  # noise only
    traces.append(("dev", None, None, 0, 0))
    return write_dataset(tmp_path, traces)


def test_targets_follow_the_protocol_rules(spiky):
    t = make_targets(spiky)
    t1, t23 = t["task1"], t["task23"]
    assert set(t1["trace_split"]) == {"dev", "test"} and set(t23["trace_split"]) == {"dev", "test"}
    assert (t1["end_sample"] - t1["start_sample"] == 3000).all()
    assert (t23["end_sample"] - t23["start_sample"] == 1000).all()
    arrivals = trace_arrivals(spiky)
    for _, r in t1.iterrows():
        first = arrivals[r.trace_idx][0][0] if arrivals[r.trace_idx] else None
        if r.trace_type == "earthquake":
            assert r.start_sample + 100 <= first <= r.end_sample - 100
        elif first is not None:  # noise before the event: ends before the first arrival
            assert r.end_sample <= first
    # 8 event traces in dev/test: one earthquake and one noise window each, plus the 2 noise-only traces
    assert (t1["trace_type"] == "earthquake").sum() == 8 and (t1["trace_type"] == "noise").sum() == 10
    for _, r in t23.iterrows():
        inside = [a for a, _, _ in arrivals[r.trace_idx] if r.start_sample <= a < r.end_sample]
        assert inside == [r.phase_onset]  # exactly one pick in the window, 0.5 s inside
        assert r.start_sample + 50 <= r.phase_onset <= r.end_sample - 50
    assert sorted(t23["phase_label"].value_counts().to_dict().items()) == [("P", 8), ("S", 8)]


def test_targets_are_reproducible_and_independent_of_the_split_list(spiky, tmp_path):
    a, b = make_targets(spiky), make_targets(spiky)
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])
    only_test = make_targets(spiky, TargetsConfig(splits=("test",)))
    for k in a:
        pd.testing.assert_frame_equal(only_test[k].reset_index(drop=True),
                                      a[k][a[k]["trace_split"] == "test"].reset_index(drop=True))
    other = make_targets(spiky, TargetsConfig(seed=7))
    assert not other["task1"]["start_sample"].equals(a["task1"]["start_sample"])
    save_targets(a, tmp_path / "targets")
    back = load_targets(tmp_path / "targets")
    pd.testing.assert_frame_equal(back["task23"], a["task23"], check_dtype=False)


def test_picks_closer_than_the_spacing_get_no_window(tmp_path):
    # A pick must lie 0.5 s inside its window (start + 50 <= onset <= end - 50, end exclusive) and the window's
    # samples 0.5 s (50 samples) away from the other pick. P and S 0.8 s apart: neither is isolated; 3 s and
    # 1 s apart: both; 99 samples apart: only P (window [2050, 3050), last sample 50 before S; an S window would
    # have to start at 3050 and hold S 50 samples after its start, at 3100 or later).
    ds = write_dataset(tmp_path, [("test", 3000.0, 3080.0, 0, 0), ("test", 3000.0, 3300.0, 0, 0),
                                  ("test", 3000.0, 3099.0, 0, 0), ("test", 3000.0, 3100.0, 0, 0)])
    t23 = task23_targets(ds, TargetsConfig(splits=("test",)))
    assert t23["trace_idx"].tolist() == [1, 1, 2, 3, 3]
    assert t23[t23["trace_idx"] == 2][["phase_label", "start_sample", "end_sample"]].values.tolist() == [
        ["P", 2050, 3050]]
    # no noise-only trace and the first pick at 30 s: task 1 has no noise window (the protocol needs more than
    # one window of data before the first arrival)
    assert set(make_targets(ds)["task1"]["trace_type"]) == {"earthquake"}


@pytest.mark.parametrize("order", ["ZNE", "ENZ"])
def test_predictions_recover_known_offsets(spiky, order):
    model = ChannelSpikePicker(component_order=order).eval()
    targets = make_targets(spiky)
    pred = {k: predict_targets(model, spiky, v, batch_size=5) for k, v in targets.items()}
    t23 = pred["task23"]
    p = t23[t23["phase_label"] == "P"]
    assert np.allclose(p["p_sample_pred"] - p["phase_onset"], 30)
    s = t23[t23["phase_label"] == "S"]
    assert np.allclose(s["s_sample_pred"] - s["phase_onset"], -20)
    scores = task_scores(pred)
    assert scores["P_mean_s"] == pytest.approx(0.3) and scores["S_mean_s"] == pytest.approx(-0.2)
    assert scores["P_frac_beyond"] == 0 and scores["S_rmse_s"] == pytest.approx(0.2)
    # detection: 1 - noise is 0.95 on the spikes of the earthquake windows, 0.1 on noise windows
    assert scores["det_auc"] == pytest.approx(1.0) and scores["det_f1"] == pytest.approx(1.0)
    # P windows: max P 0.9 / max S 0.05 = 18; S windows: 0.05 / 0.9
    assert scores["phase_mcc"] == pytest.approx(1.0)
    assert np.allclose(p["score_p_or_s"], 18) and np.allclose(s["score_p_or_s"], 0.05 / 0.9)
    assert np.allclose(p["p_peak"], 0.9) and np.allclose(s["s_peak"], 0.9) and np.allclose(p["s_peak"], 0.05)


def test_prediction_needs_the_dataset_rate(spiky):
    model = ChannelSpikePicker(sampling_rate=50).eval()
    with pytest.raises(ValueError, match="Hz"):
        predict_targets(model, spiky, make_targets(spiky)["task1"])
