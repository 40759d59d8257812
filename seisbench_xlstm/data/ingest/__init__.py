"""Ingest a network's own waveforms and picks into a SeisBench dataset.

``ingest(waveforms, picks, fmt, out)`` (console: ``seisbench-xlstm ingest --waveforms PATH --picks PATH
--format nordic|quakeml|csv --out DIR``) reads

* waveforms: any file ObsPy can read (miniSEED, SEISAN, SAC, ...), files or folders (searched recursively);
* picks: QuakeML, Nordic (SEISAN S-files or multi-event files such as ``select.out``) or CSV,

and writes ``DIR/metadata.csv`` + ``DIR/waveforms.hdf5`` (gzip-compressed, SeisBench format, 100 Hz, ZNE,
channels-first) with one three-component trace per station and event, cut around that station's picks,
plus ``DIR/ingest_summary.json``. Nothing is dropped silently: everything skipped or changed is listed in
the returned :class:`IngestSummary` (printed by the console command).

Modules: :mod:`.records` (picks, events, options, summary), :mod:`.readers` (QuakeML, CSV, files),
:mod:`.nordic` (Nordic), :mod:`.events` (duplicates, one P/S per station), :mod:`.waveforms` (index, channel
sets, merging), :mod:`.traces` (one event's station traces), :mod:`.writer` (SeisBench's
``WaveformDataWriter`` with gzip), :mod:`.run` (``ingest``), :mod:`.cli` (console). Splits use the package's
one algorithm, :func:`seisbench_xlstm.data.splits.split_by_event`; resampling uses annotate's resampler,
:mod:`seisbench_xlstm.data.resample`.

Rules (also in docs/data.md):

* Picks: phase hints are mapped to P/S with :func:`~seisbench_xlstm.data.phases.phase_of_hint`; other readings
  (amplitudes such as ``IAML``, unknown phases) are counted and ignored. Per station and event the earliest P
  and the earliest S are kept; further picks of the same phase are reported as duplicates.
* Events: identical pick files are read once. Events with the same id are merged; with Nordic, events that
  name the same waveform file (in their own type-6 lines) and whose origin times differ by at most
  ``duplicate_tolerance`` seconds are one event (SEISAN keeps re-located copies of an event as separate
  S-files). ``source_id`` is the event id (QuakeML resource id, CSV ``event_id``, Nordic: the S-file name, or
  ``NAME#k`` for the k-th event of a multi-event file; the SEISAN ``ID:`` is kept in ``source_catalog_id``).
* Components: per station the channel set (same band/instrument code and location) with Z and two
  horizontals is used, preferring the band code of the picks, then Z/N/E over Z/1/2, then the highest
  sampling rate. When only Z/1/2 exist and no inventory is given, 1 is stored as N and 2 as E without
  rotation (``trace_orientation = "Z12 unrotated"``); with ``inventory`` they are rotated to ZNE.
* Window: from ``window_before`` (60) s before the first pick to ``window_after`` (30) s after the last pick
  at the station, cut to the data available (shorter windows are reported); resampled to ``sampling_rate``
  as SeisBench's annotate resamples.
* Gaps and overlaps: overlapping records are merged (ObsPy ``merge(method=1)``, reported); a gap inside
  the window skips the trace (reported) unless ``fill_gaps`` (zeros, reported).
* Splits: by event; events whose traces overlap in time at a shared station are placed together, so no
  waveform sample sits in two splits; empty or tiny splits are reported.
* Training windows: the summary counts the traces shorter than a 4096-sample window and those that hold a
  pre-arrival noise window (``IngestSummary.training_windows``).
"""

from .cache import default_ingest_cache, ingest_cached
from .cli import add_ingest_subcommand, run_ingest_command
from .nordic import read_nordic
from .readers import read_csv_picks, read_quakeml
from .records import FORMATS, Event, IngestConfig, IngestSummary, Pick
from .run import ingest
from .waveforms import WaveformIndex

__all__ = [
    "default_ingest_cache",
    "ingest_cached",
    "ingest",
    "IngestConfig",
    "IngestSummary",
    "add_ingest_subcommand",
    "run_ingest_command",
    "FORMATS",
    "Event",
    "Pick",
    "read_nordic",
    "read_quakeml",
    "read_csv_picks",
    "WaveformIndex",
]
