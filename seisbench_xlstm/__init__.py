"""seisbench-xlstm: xLSTM (mLSTM) phase pickers and seismic foundation models for SeisBench."""

__version__ = "0.1.0"

from .backbones import (  # noqa: E402
    SequentialBackbone,
    SequentialBackboneConfig,
    UNetBackbone,
    UNetBackboneConfig,
    build_backbone,
    count_parameters,
)
from .bimlstm import BiMLSTMLayer, BiMLSTMLayerConfig  # noqa: E402
from .kernels import set_default_kernel  # noqa: E402
from .pickers import PICKERS, XLSTMSeqPicker, XLSTMUNetPicker, load_picker, normalize_windows  # noqa: E402
from .records import AnnotateWarning  # noqa: E402
from .weight_lookup import CorruptWeightsError, WeightsNotFoundError  # noqa: E402

__all__ = [
    "AnnotateWarning",
    "BiMLSTMLayer",
    "BiMLSTMLayerConfig",
    "CorruptWeightsError",
    "PICKERS",
    "SequentialBackbone",
    "SequentialBackboneConfig",
    "UNetBackbone",
    "UNetBackboneConfig",
    "WeightsNotFoundError",
    "XLSTMSeqPicker",
    "XLSTMUNetPicker",
    "build_backbone",
    "count_parameters",
    "load_picker",
    "normalize_windows",
    "set_default_kernel",
]
