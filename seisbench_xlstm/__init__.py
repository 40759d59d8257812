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
from .pickers import (  # noqa: E402
    PICKERS,
    CorruptWeightsError,
    WeightsNotFoundError,
    XLSTMSeqPicker,
    XLSTMUNetPicker,
    normalize_windows,
)

__all__ = [
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
    "normalize_windows",
    "set_default_kernel",
]
