"""Mixing datasets: weights, fractions, splits kept, noise kept as noise."""

import numpy as np
import pytest
import seisbench.data as sbd

from seisbench_xlstm.data import (
    PickingConfig,
    assign_splits,
    mix_datasets,
    open_dataset,
    picking_generator,
)
from test_data_synth import write_dataset


@pytest.fixture
def three(tmp_path):
    """A: 12 event traces + 3 noise (splits), B: 4 event traces + 2 noise (splits), C: no split column."""
    write_dataset(tmp_path / "A", n_events=6, traces_per_event=2, n_noise=3, name_prefix="a")
    write_dataset(tmp_path / "B", n_events=2, traces_per_event=2, n_noise=2, name_prefix="b",
                  p_col="trace_Pg_arrival_sample", s_col="trace_Sn_arrival_sample", seed=1)
    write_dataset(tmp_path / "C", n_events=9, traces_per_event=3, n_noise=0, name_prefix="c", with_split=False,
                  seed=2)
    return tmp_path


def test_union_keeps_everything(three):
    mixed = mix_datasets([three / "A", three / "B"])
    assert isinstance(mixed.dataset, sbd.MultiWaveformDataset)
    assert len(mixed) == len(mixed.dataset) == 15 + 6
    summ = mixed.summary().set_index("dataset")
    assert summ["noise_traces"].tolist() == [3, 2]
    # default weights are proportional to size: uniform over traces
    np.testing.assert_allclose(mixed.trace_weights, 1 / 21)


def test_weights_drive_the_sampler(three):
    mixed = mix_datasets({three / "A": 1.0, three / "B": 3.0})
    w = mixed.trace_weights
    assert w.sum() == pytest.approx(1.0)
    names = mixed.dataset.metadata["trace_dataset"].to_numpy()
    assert w[names == "B"].sum() == pytest.approx(0.75)
    import torch

    idx = np.array(list(mixed.sampler(20000, generator=torch.Generator().manual_seed(0))))
    frac_b = (names[idx] == "B").mean()
    assert abs(frac_b - 0.75) < 0.02


def test_splits_are_kept_per_dataset(three):
    mixed = mix_datasets([three / "A", three / "B"])
    a = open_dataset(three / "A")
    b = open_dataset(three / "B")
    for split in ("train", "dev", "test"):
        part = mixed.get_split(split)
        expected = (a.metadata["split"] == split).sum() + (b.metadata["split"] == split).sum()
        assert len(part) == expected
        assert set(part.dataset.metadata["split"]) == {split}
        # weights stay normalised within a split
        assert part.trace_weights.sum() == pytest.approx(1.0)
    tr, dv, te = mixed.train_dev_test()
    assert len(tr) + len(dv) + len(te) == len(mixed)


def test_missing_splits_assigned_by_event(three):
    mixed = mix_datasets([three / "C"], split_fractions=(0.6, 0.2, 0.2), seed=3)
    md = mixed.dataset.metadata
    assert md["split"].notna().all()
    # every event in exactly one split
    assert (md.groupby("source_id")["split"].nunique() == 1).all()
    assert set(md["split"]) == {"train", "dev", "test"}
    # deterministic
    md2 = mix_datasets([three / "C"], split_fractions=(0.6, 0.2, 0.2), seed=3).dataset.metadata
    assert (md["split"].to_numpy() == md2["split"].to_numpy()).all()


def test_assign_splits_keeps_existing_and_handles_noise(three):
    ds = open_dataset(three / "A")
    before = ds.metadata["split"].copy()
    assign_splits(ds)
    assert (ds.metadata["split"] == before).all()
    assign_splits(ds, overwrite=True, seed=5)
    md = ds.metadata
    assert (md[md["source_id"].notna()].groupby("source_id")["split"].nunique() == 1).all()
    assert md.loc[md["trace_category"] == "noise", "split"].notna().all()


def test_fractions_subsample_events(three):
    mixed = mix_datasets([three / "C", three / "A"], fractions=[1 / 3, 1.0])
    summ = mixed.summary().set_index("dataset")
    assert summ.loc[str(three / "C"), "events"] == 3
    assert summ.loc[str(three / "C"), "traces"] == 9
    assert summ.loc[str(three / "A"), "traces"] == 15
    with pytest.raises(ValueError):
        mix_datasets([three / "A"], fractions=[0.0])
    with pytest.raises(ValueError):
        mix_datasets([three / "A", three / "B"], weights=[1.0])


def test_noise_traces_stay_noise_in_a_mix(three):
    mixed = mix_datasets([three / "A", three / "B"])
    gen = picking_generator(mixed, PickingConfig(noise_window_p=0.0), train=False)
    md = mixed.dataset.metadata
    noise_idx = np.flatnonzero((md["trace_category"] == "noise").to_numpy())
    assert len(noise_idx) == 5
    for i in noise_idx:
        y = gen[int(i)]["y"]
        np.testing.assert_allclose(y[2], 1.0)
        assert y[:2].max() == 0.0
    # and event traces of B (Pg/Sn spelling) get P and S labels
    b_event = np.flatnonzero(((md["trace_dataset"] == "B") & (md["trace_category"] != "noise")).to_numpy())
    y = gen[int(b_event[0])]["y"]
    assert y[0].max() > 0.5 or y[1].max() > 0.5
