"""Output: SeisBench's ``WaveformDataWriter`` with gzip-compressed buckets, written atomically."""

from __future__ import annotations

from pathlib import Path

import h5py
import seisbench.data as sbd
from tqdm import tqdm

__all__ = ["GzipWaveformDataWriter"]


class GzipWaveformDataWriter(sbd.WaveformDataWriter):
    """``seisbench.data.WaveformDataWriter`` whose buckets are gzip-compressed (with shuffle), one HDF5 chunk per
    trace, so a lazy read decompresses only that trace.

    Files are written as ``*.partial`` and renamed to ``metadata.csv`` / ``waveforms.hdf5`` in ``out`` when the
    ``with`` block ends without an error; on an error they are removed. Metadata dicts passed to
    :meth:`add_trace` can still be changed (e.g. a ``split`` added) until the block ends: SeisBench writes
    the CSV from them at the end.
    """

    def __init__(self, out: Path, compression_level: int = 4, bucket_size: int = 256, progress: bool = False):
        self.out = Path(out)
        self.final = (self.out / "metadata.csv", self.out / "waveforms.hdf5")
        super().__init__(self.out / "metadata.csv.partial", self.out / "waveforms.hdf5.partial")
        self.compression_level = int(compression_level)
        self.bucket_size = int(bucket_size)
        if not progress:
            self._pbar = tqdm(disable=True)

    @property
    def n_traces(self) -> int:
        return len(self._metadata)

    def _write_bucket(self, bucket):
        if len(bucket) == 0:
            return
        if self._waveform_file is None:
            self._waveform_file = h5py.File(self.waveforms_path, "w")
            self._waveform_file.create_group("data")
        name = self._get_bucket_name()
        block, locations = self._pack_arrays([waveform for _, waveform in bucket])
        self._waveform_file["data"].create_dataset(
            name,
            data=block,
            chunks=(1,) + block.shape[1:],
            compression="gzip",
            compression_opts=self.compression_level,
            shuffle=True,
        )
        for (metadata, _), location in zip(bucket, locations):
            metadata["trace_name"] = f"{name}${location}"

    def _remove_partial(self):
        for p in (self.metadata_path, self.waveforms_path):
            p.unlink(missing_ok=True)

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type is not None:
            if self._waveform_file is not None:
                self._waveform_file.close()
            self._pbar.close()
            self._remove_partial()
            return False
        super().__exit__(None, None, None)
        if self.metadata_path.is_file() and self.waveforms_path.is_file():
            self.waveforms_path.replace(self.final[1])
            self.metadata_path.replace(self.final[0])
        else:
            self._remove_partial()
        return False
