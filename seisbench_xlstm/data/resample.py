"""One resampler for ingest, training and annotate: the one SeisBench's ``annotate`` uses.

SeisBench 0.12.6 resamples annotate's input with ``WaveformModel.resample``: for an integer rate ratio a
zero-phase Butterworth low-pass at the new Nyquist frequency (ObsPy ``Trace.filter("lowpass", corners=4,
zerophase=True)``) and ``Trace.decimate(no_filter=True)``; otherwise ObsPy's FFT resampling
``Trace.resample(no_filter=True)`` (Hann-windowed spectrum). SeisBench's *dataset* loader resamples
differently (``scipy.signal.decimate`` with a causal filter by default, or ``scipy.signal.resample``), which
shifts picks by the filter delay and changes the spectrum, and the first ingest used
``scipy.signal.resample_poly``. So here everything goes through ``WaveformModel.resample``:

* :func:`resample_trace` (ingest),
* :func:`resample_array` / :class:`AnnotateResampler` (datasets opened by ``open_dataset``, via
  :func:`use_annotate_resampler`).

One difference, on purpose: ObsPy's FFT resampling maps ``n`` input samples onto ``int(n * target / source)``
output samples over the same duration, so where ``n * target / source`` is not a whole number the output
samples are spaced slightly differently from the ``1 / target`` their header says (up to one sample of drift
at the end of the record; 0.19 samples on average for a 94 s window from 250 Hz). Here the input is first cut
to the largest length ``m <= n`` with ``m * target / source`` whole (for rate ratios ``p/q`` with ``q <= 100``;
at most ``q - 1`` trailing input samples are dropped), so every output sample sits at its time.

Output length: ``ceil(n / k)`` for an integer ratio ``k``, else ``(n - n % q) * p / q`` (:func:`output_length`);
sample 0 keeps its time, so SeisBench's rescaling of ``*_sample`` metadata stays right.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import obspy

__all__ = ["resample_trace", "resample_array", "AnnotateResampler", "use_annotate_resampler", "output_length"]

#: largest denominator of a rate ratio for which the input is cut to a whole number of output samples
MAX_DENOMINATOR = 100


def _ratio(source: float, target: float) -> Fraction | None:
    """target / source as p / q when it is (nearly exactly) such a fraction with q <= MAX_DENOMINATOR."""
    f = Fraction(float(target) / float(source)).limit_denominator(MAX_DENOMINATOR)
    return f if abs(float(f) - float(target) / float(source)) < 1e-9 else None


def _integer_factor(source: float, target: float) -> bool:
    return source != target and source % target == 0  # WaveformModel.resample's test


def _usable_input(n: int, source: float, target: float) -> int:
    """Input samples used: all for an integer decimation, else cut to a whole number of output samples."""
    if source == target or _integer_factor(source, target):
        return n
    f = _ratio(source, target)
    return n if f is None else n - n % f.denominator


def output_length(n: int, source: float, target: float) -> int:
    """Samples after resampling ``n`` samples from ``source`` to ``target`` Hz with this module."""
    if source == target:
        return int(n)
    if _integer_factor(source, target):
        return int(math.ceil(n / int(source // target)))
    m = _usable_input(n, source, target)
    return int(m / (source / float(target)))


def _model_resample(stream: obspy.Stream, sampling_rate: float):
    from seisbench.models import WaveformModel

    WaveformModel.resample(stream, sampling_rate)


def resample_trace(trace: obspy.Trace, sampling_rate: float) -> obspy.Trace:
    """A float64 copy of ``trace`` at ``sampling_rate``, resampled as SeisBench's annotate resamples."""
    tr = trace.copy()
    m = _usable_input(tr.stats.npts, tr.stats.sampling_rate, float(sampling_rate))
    tr.data = np.asarray(tr.data[:m], dtype=np.float64)
    _model_resample(obspy.Stream([tr]), float(sampling_rate))
    return tr


def resample_array(data: np.ndarray, source: float, target: float, axis: int = -1) -> np.ndarray:
    """``data`` (samples along ``axis``) from ``source`` Hz to ``target`` Hz, as annotate resamples.

    Each row is resampled on its own (an ObsPy trace); floating dtypes are kept, others become float64.
    """
    data = np.asarray(data)
    x = np.moveaxis(data, axis, -1)
    if x.shape[-1] == 0 or source == target:
        return data
    m = _usable_input(x.shape[-1], float(source), float(target))
    rows = x.reshape(-1, x.shape[-1])[:, :m]
    out = []
    for row in rows:
        tr = obspy.Trace(np.array(row, dtype=np.float64))
        tr.stats.sampling_rate = float(source)
        _model_resample(obspy.Stream([tr]), float(target))
        out.append(tr.data)
    dtype = data.dtype if np.issubdtype(data.dtype, np.floating) else np.float64
    y = np.stack(out).reshape(x.shape[:-1] + (len(out[0]),)).astype(dtype, copy=False)
    return np.moveaxis(y, -1, axis)


class AnnotateResampler:
    """Drop-in for ``WaveformDataset._resample(waveform, target, source)`` using :func:`resample_array`.

    :param sample_axis: axis of the samples in the stored waveforms (from the dataset's ``dimension_order``).
    """

    def __init__(self, sample_axis: int):
        self.sample_axis = int(sample_axis)

    def __call__(self, waveform, target_sampling_rate, source_sampling_rate, eps: float = 1e-4):
        if 1 - eps < target_sampling_rate / source_sampling_rate < 1 + eps:
            return waveform
        return resample_array(waveform, source_sampling_rate, target_sampling_rate, axis=self.sample_axis)


def use_annotate_resampler(dataset):
    """Make a SeisBench dataset (or every part of a ``MultiWaveformDataset``) resample as annotate does."""
    import seisbench.data as sbd

    parts = dataset.datasets if isinstance(dataset, sbd.MultiWaveformDataset) else [dataset]
    for ds in parts:
        dims = str(ds.data_format.get("dimension_order", "CW")).replace("N", "")
        ds._resample = AnnotateResampler(dims.index("W") if "W" in dims else -1)
    return dataset
