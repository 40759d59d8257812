"""Data of the fine-tuning runner: label fraction by event (reproducible, nested, split-safe), teacher sources."""

import numpy as np
import obspy
import pandas as pd
import pytest

from finetune.config import IngestSourceConfig, compose_config
from finetune.data import FinetuneData, event_keys, ingest_cached, select_label_fraction
from seisbench_xlstm.data import open_dataset
from seisbench_xlstm.evaluation import TRACE_T0
from test_data_synth import write_dataset
from test_finetune_pseudolabels import FakeTeacher


def _metadata(n_events=40, per_event=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(n_events):
        split = rng.choice(["train", "dev", "test"], p=[0.7, 0.15, 0.15])
        for k in range(per_event):
            rows.append({"trace_name": f"e{e}_{k}", "source_id": f"ev{e}", "split": split,
                         "trace_P_arrival_sample": 100.0 + k, "trace_S_arrival_sample": np.nan if k else 300.0})
    rows.append({"trace_name": "noise", "source_id": np.nan, "split": "train",
                 "trace_P_arrival_sample": np.nan, "trace_S_arrival_sample": np.nan})
    return pd.DataFrame(rows)


def test_label_fraction_is_reproducible_nested_and_train_only():
    md = _metadata()
    train_with_picks = (md["split"] == "train") & md["trace_P_arrival_sample"].notna()
    masks = {f: select_label_fraction(md, f, seed=3) for f in (0.05, 0.1, 0.5, 1.0)}
    for f, mask in masks.items():
        assert not (mask & ~train_with_picks.to_numpy()).any()  # only train traces with picks
        np.testing.assert_array_equal(mask, select_label_fraction(md, f, seed=3))  # reproducible
        events = set(md.loc[mask, "source_id"])
        in_events = md["source_id"].isin(events)
        assert mask.sum() == (in_events & train_with_picks).sum()  # whole events: every train trace of them
        assert mask.sum() >= f * train_with_picks.sum()  # whole events until the fraction is reached
        assert mask.sum() < f * train_with_picks.sum() + 3  # ... and not one event more
    assert masks[1.0].sum() == train_with_picks.sum()
    assert not (masks[0.05] & ~masks[0.1]).any() and not (masks[0.1] & ~masks[0.5]).any()  # nested
    assert not np.array_equal(select_label_fraction(md, 0.5, seed=3), select_label_fraction(md, 0.5, seed=4))
    with pytest.raises(ValueError):
        select_label_fraction(md, 0.0, seed=0)
    assert list(event_keys(md.iloc[[0, len(md) - 1]])) == ["event:ev0", "trace:noise"]


def test_label_fraction_on_the_real_datasets_is_split_safe(shared_data, tmp_path):
    nz = ingest_cached(IngestSourceConfig(name="nz-dfdp", waveforms=str(shared_data / "nz-dfdp" / "WAV"),
                                          picks=str(shared_data / "nz-dfdp" / "REA"), format="nordic"), tmp_path)
    for path in (nz, shared_data / "ncedc154"):
        md = open_dataset(path).metadata
        keys = event_keys(md)
        # no event in two splits
        assert (pd.DataFrame({"k": keys, "s": md["split"]}).groupby("k")["s"].nunique() == 1).all()
        for f in (0.05, 0.1):
            mask = select_label_fraction(md, f, seed=0)
            assert set(md.loc[mask, "split"]) == {"train"}
            chosen = set(keys[mask])
            assert set(md.loc[np.isin(keys, list(chosen)), "split"]) == {"train"}
            n_train = int((md["split"] == "train").sum())
            largest = pd.Series(keys[mask]).value_counts().max()
            assert f * n_train <= mask.sum() < f * n_train + largest  # whole events, none more than needed
            np.testing.assert_array_equal(mask, select_label_fraction(md, f, seed=0))
    assert ingest_cached(IngestSourceConfig(name="nz-dfdp", waveforms=str(shared_data / "nz-dfdp" / "WAV"),
                                            picks=str(shared_data / "nz-dfdp" / "REA")), tmp_path) == nz  # reused


@pytest.fixture
def sources(tmp_path):
    write_dataset(tmp_path / "ds", n_events=12, traces_per_event=2, n_noise=0, npts=6000, seed=1)
    rng = np.random.default_rng(2)
    st = obspy.Stream()
    for c in "ZNE":
        st += obspy.Trace(rng.normal(size=60000).astype(np.float32),
                          header=dict(network="O2", station="WILZ", channel=f"EH{c}", sampling_rate=100.0,
                                      starttime=obspy.UTCDateTime(2024, 2, 3)))
    (tmp_path / "cont").mkdir()
    st.write(str(tmp_path / "cont" / "rec.mseed"), format="MSEED")
    return tmp_path


def _teachers(calls):
    """Fake teachers: one P 2 s after every analyst P of the labelled traces (kept: > 1 s away), and P/S pairs
    every 60 s in the continuous record."""
    t0 = obspy.UTCDateTime(2024, 2, 3)
    peaks = {("O2.WILZ.", "P"): [(t0 + 30 + 60 * k).timestamp for k in range(10)],
             ("O2.WILZ.", "S"): [(t0 + 36 + 60 * k).timestamp for k in range(10)]}

    class Teacher(FakeTeacher):
        def annotate(self, stream, batch_size=64):
            calls.append(len(stream))
            for tr in stream:
                if tr.stats.network == "XX":
                    peaks.setdefault((f"XX.{tr.stats.station}.", "P"), [TRACE_T0.timestamp + 57.0])
            return super().annotate(stream, batch_size)

    return [Teacher("A", peaks)]


def test_teacher_sources_label_fraction_and_cache(sources, monkeypatch):
    calls = []
    teachers = _teachers(calls)
    monkeypatch.setattr(FinetuneData, "teachers", lambda self: teachers)
    cfg = compose_config([f"data.datasets=[{sources / 'ds'}]", f"data.cache_dir={sources / 'cache'}",
                          f"pseudo.continuous=[{sources / 'cont'}]", "pseudo.labelled=true", "pseudo.weight=0.25",
                          "pseudo.unlabelled_traces=true", "data.label_fraction=0.5", "pseudo.chunk_len=12000"])
    data = FinetuneData(cfg).prepare()
    info = data.info
    assert info["labelled"][0]["labelled_train"] == 4 and info["labelled"][0]["unlabelled_train"] == 4
    # 600 s, cut at 420 s: 3 x 120 s + 60 s of train chunks, then 120 s + 60 s of test chunks
    assert info["continuous"]["chunks"] == {"train": 4, "test": 2}
    assert info["continuous"]["picks"]["train_P"] == 7
    assert info["teachers"] == ["PhaseNet:original", "EQTransformer:original"]
    assert data.extra == {"trace_pseudoP0_arrival_sample": "P", "trace_pseudoS0_arrival_sample": "S",
                          "trace_pseudoP1_arrival_sample": "P", "trace_pseudoS1_arrival_sample": "S"}
    train = data.train_gen.mixed
    md = train.dataset.metadata
    chunk = md["station_code"] == "WILZ"
    assert chunk.sum() == 4 and set(train.dataset.metadata.loc[~chunk, "split"]) == {"train"}
    assert train.trace_weights[chunk.to_numpy()].sum() == pytest.approx(0.25)
    # the unselected traces lost their analyst picks and carry the teacher's P only; the selected keep both
    labelled = md.loc[~chunk]
    blank = labelled["trace_p_arrival_sample"].isna()
    assert blank.sum() == 4 and labelled.loc[blank, "trace_pseudoP0_arrival_sample"].notna().all()
    assert labelled.loc[~blank, "trace_pseudoP0_arrival_sample"].notna().all()  # 2 s after the analyst P: kept
    # dev traces keep analyst picks only; training windows of chunks carry P and S labels
    assert len(data.dev_traces.trace_ids) == len(data.mixed.dev()) and data.dev_traces.reference["P"]
    np.random.seed(0)
    idx = int(np.nonzero(chunk.to_numpy())[0][0])
    assert data.train_gen[idx]["y"][:2].max() > 0.5
    # the second prepare reuses the cached teacher labels: no teacher call
    n = len(calls)
    FinetuneData(cfg).prepare()
    assert len(calls) == n
