"""Data layer of seisbench-xlstm: datasets by name or path, mixing, window generators, ingest.

Conventions: 100 Hz, component order ZNE, channels-first float32 arrays ``(channels, samples)``,
windows of 4096 samples, picking labels P, S, Noise ("PSN"). See docs/data.md.
"""

from .datasets import (
    DATASET_NAMES,
    EXTRA_DATASET_NAMES,
    DatasetLocation,
    DatasetNotAvailableError,
    check_available,
    locate_dataset,
    open_dataset,
    open_folder,
    shared_data_dir,
)
from .generators import (
    MODEL_LABELS,
    PICKER_NORMS,
    AugmentationConfig,
    NoiseOrPickWindow,
    NormalizeConfig,
    PickingConfig,
    PreArrivalNoiseWindow,
    PretrainConfig,
    RandomAmplitudeScale,
    SegmentDemeanedGap,
    SuperimposeEvent,
    label_columns_for,
    picking_generator,
    pretraining_generator,
)
from .windows import WindowEligibility, drop_unusable, trace_lengths, window_eligibility
from .continuous import ContinuousConfig, ContinuousWindows, segments_from_stream
from .loaders import make_loader
from .mixing import MixedDataset, assign_splits, mix_datasets
from .phases import PHASE_MAP, PICK_COLUMN_MAP, phase_of_column, phase_of_hint, pick_columns

# The ``ingest`` package keeps its name (``from seisbench_xlstm.data.ingest import ingest``); its function is
# exported here as ``ingest_dataset``, so that ``seisbench_xlstm.data.ingest`` stays the package.
from .ingest import IngestConfig, IngestSummary, add_ingest_subcommand, default_ingest_cache, ingest_cached  # noqa: E402
from .ingest import ingest as ingest_dataset  # noqa: E402
from .resample import resample_array, resample_trace, use_annotate_resampler  # noqa: E402
from .splits import SplitReport, split_by_event  # noqa: E402

__all__ = [
    "ContinuousConfig",
    "ContinuousWindows",
    "segments_from_stream",
    "DATASET_NAMES",
    "EXTRA_DATASET_NAMES",
    "DatasetLocation",
    "DatasetNotAvailableError",
    "check_available",
    "locate_dataset",
    "open_dataset",
    "open_folder",
    "shared_data_dir",
    "MODEL_LABELS",
    "PICKER_NORMS",
    "AugmentationConfig",
    "NoiseOrPickWindow",
    "SegmentDemeanedGap",
    "WindowEligibility",
    "window_eligibility",
    "drop_unusable",
    "trace_lengths",
    "NormalizeConfig",
    "PickingConfig",
    "PretrainConfig",
    "PreArrivalNoiseWindow",
    "RandomAmplitudeScale",
    "SuperimposeEvent",
    "label_columns_for",
    "picking_generator",
    "pretraining_generator",
    "make_loader",
    "MixedDataset",
    "assign_splits",
    "mix_datasets",
    "PHASE_MAP",
    "PICK_COLUMN_MAP",
    "phase_of_column",
    "phase_of_hint",
    "pick_columns",
    "ingest_dataset",
    "ingest_cached",
    "default_ingest_cache",
    "IngestSummary",
    "split_by_event",
    "SplitReport",
    "resample_array",
    "resample_trace",
    "use_annotate_resampler",
    "IngestConfig",
    "add_ingest_subcommand",
]
