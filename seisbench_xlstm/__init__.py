"""seisbench-xlstm: xLSTM (mLSTM) phase pickers and seismic foundation models for SeisBench."""

__version__ = "0.1.0"
