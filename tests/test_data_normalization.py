"""Training normalisation is restricted to what the pickers' ``annotate_batch_pre`` reproduces."""

import numpy as np
import pytest
import torch

from seisbench_xlstm.data import NormalizeConfig
from seisbench_xlstm.pickers import normalize_windows


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amp_norm_axis": (-2, -1)},
        {"amp_norm_axis": None},
        {"detrend_axis": -1},
        {"enabled": False},
        {"demean_axis": None},
        {"amp_norm_type": "minmax"},
        {"eps": 1e-6},
    ],
)
def test_refuses_what_annotate_cannot_do(kwargs):
    with pytest.raises(ValueError, match="annotate_batch_pre") as info:
        NormalizeConfig(**kwargs)
    assert "'std'" in str(info.value) and "'peak'" in str(info.value)


@pytest.mark.parametrize("norm", ["std", "peak"])
def test_training_normalisation_equals_the_pickers(norm):
    cfg = NormalizeConfig(amp_norm_type=norm)
    assert cfg.picker_norm == norm
    assert NormalizeConfig.for_picker(norm) == cfg
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 30, (3, 4096)) + np.array([[2000.0], [-50.0], [0.0]])).astype(np.float32)
    x[2] = 0.0  # a zero-filled (missing) component stays zero
    state = {"X": (x.copy(), {})}
    cfg.build()(state)
    expected = normalize_windows(torch.from_numpy(x.astype(np.float64))[None], norm)[0].numpy()
    np.testing.assert_allclose(state["X"][0], expected, rtol=1e-5, atol=1e-5)


def test_for_picker_reads_the_model_argument():
    class FakePicker:
        norm = "peak"

    assert NormalizeConfig.for_picker(FakePicker()).amp_norm_type == "peak"
    with pytest.raises(ValueError):
        NormalizeConfig.for_picker("rms")
