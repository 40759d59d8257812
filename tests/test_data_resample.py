"""One resampler: datasets opened by ``open_dataset`` resample exactly as SeisBench's annotate does
(``WaveformModel.resample``), without the delay of SeisBench's dataset loader, and the predicted lengths hold."""

from fractions import Fraction

import numpy as np
import obspy
import pytest
import seisbench.data as sbd
from seisbench.models import WaveformModel

from seisbench_xlstm.data import open_dataset, trace_lengths
from seisbench_xlstm.data.resample import output_length, resample_array
from test_data_ingest_more import broadband, subsample_lag


def write_at(path, sr, npts):
    t = np.arange(npts) / sr
    x = np.stack([broadband(t), broadband(t + 0.3), broadband(t + 0.7)]).astype(np.float32)
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as w:
        w.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": sr}
        w.add_trace({"trace_name": "t", "trace_sampling_rate_hz": sr, "trace_P_arrival_sample": npts / 2,
                     "split": "train"}, x)
    return x


def annotate_resampled(x, sr, n=None):
    out = []
    for row in x[:, :n]:
        st = obspy.Stream([obspy.Trace(row.astype(np.float64), header={"sampling_rate": sr})])
        WaveformModel.resample(st, 100.0)
        out.append(st[0].data)
    return np.stack(out)


@pytest.mark.parametrize("sr,npts", [(200.0, 12001), (250.0, 15000), (250.0, 15003), (40.0, 4001), (50.0, 3000)])
def test_dataset_resamples_like_annotate(tmp_path, sr, npts):
    x = write_at(tmp_path, sr, npts)
    ds = open_dataset(tmp_path)
    got = ds.get_waveforms(0)
    assert got.shape[1] == trace_lengths(ds)[0] == output_length(npts, sr, 100.0)
    # the same as annotate's resampler (on the input cut to a whole number of output samples)
    q = 1 if sr % 100 == 0 else Fraction(100 / sr).limit_denominator(100).denominator
    m = npts - npts % q
    np.testing.assert_allclose(got, annotate_resampled(x, sr, m), rtol=1e-5, atol=1e-3)
    # and every sample at its time
    t = np.arange(got.shape[1]) / 100.0
    inner = slice(100, -100)
    assert abs(subsample_lag(got[0, inner].astype(float), broadband(t)[inner])) < 0.05


def test_seisbench_loader_would_delay_picks(tmp_path):
    """SeisBench's own loader (causal scipy decimate) shifts 200 Hz data by samples; ours does not."""
    write_at(tmp_path, 200.0, 12001)
    plain = sbd.WaveformDataset(tmp_path, sampling_rate=100, component_order="ZNE")
    ours = open_dataset(tmp_path)
    t = np.arange(6001) / 100.0
    inner = slice(100, -100)
    lag_plain = subsample_lag(plain.get_waveforms(0)[0, inner].astype(float), broadband(t)[inner])
    lag_ours = subsample_lag(ours.get_waveforms(0)[0, inner].astype(float), broadband(t)[inner])
    assert abs(lag_plain) > 1.0 and abs(lag_ours) < 0.05


def test_resample_array_axes_and_dtypes():
    x = np.random.default_rng(0).normal(size=(2, 3, 1000)).astype(np.float32)
    y = resample_array(x, 200.0, 100.0)
    assert y.shape == (2, 3, 500) and y.dtype == np.float32
    yt = resample_array(np.moveaxis(x, -1, 0), 200.0, 100.0, axis=0)
    np.testing.assert_allclose(np.moveaxis(yt, 0, -1), y)
    assert resample_array(x, 100.0, 100.0) is x
