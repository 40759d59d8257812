"""The weight export of the fine-tuning runner: half precision with its output check, the fp32 fallback, no windows."""

import json

import pytest
import torch

from finetune.export import ExportCheckError, export_weights
from seisbench_xlstm import XLSTMSeqPicker
from tiny import TINY_SEQUENTIAL

pytestmark = pytest.mark.usefixtures("one_thread")


def _docstring(check):
    return "tiny export" + (f"; stored {check['precision']}" if check else "")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()


def _stored_dtypes(path):
    state = torch.load(path, weights_only=True)
    return {v.dtype for v in state.values() if v.is_floating_point()}


def test_half_precision_within_tolerance_is_kept(model, tmp_path):
    x = torch.randn(3, 3, 4096)
    out = export_weights(model, "xlstm_seq", tmp_path / "w", "1", "fp16", _docstring, x, 1.0, {"P_threshold": 0.4})
    assert out["precision"] == "fp16" and out["windows"] == 3 and "requested_precision" not in out
    assert _stored_dtypes(out["pt"]) == {torch.float16}


def test_half_precision_beyond_tolerance_falls_back_to_fp32(model, tmp_path):
    """A tolerance no fp16 rounding meets: the run keeps its weights, stored in fp32 (it failed and removed them
    before), and says what half precision would have changed."""
    x = torch.randn(3, 3, 4096)
    out = export_weights(model, "xlstm_seq", tmp_path / "w", "1", "fp16", _docstring, x, 0.0, {"P_threshold": 0.4})
    assert out["precision"] == "fp32" and out["requested_precision"] == "fp16"
    assert out["max_abs_diff"] == 0.0 and out["half_precision_diff"] > 0.0
    assert _stored_dtypes(out["pt"]) == {torch.float32}
    meta = json.loads(open(out["json"]).read())
    assert meta["default_args"]["P_threshold"] == 0.4 and meta["docstring"].endswith("stored fp32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json.v1", "w.pt.v1"]
    loaded = XLSTMSeqPicker.load(tmp_path / "w", version_str="1").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])


def test_fallback_off_fails_and_removes_the_files(model, tmp_path):
    x = torch.randn(2, 3, 4096)
    with pytest.raises(ExportCheckError, match="fp16"):
        export_weights(model, "xlstm_seq", tmp_path / "w", "1", "fp16", _docstring, x, 0.0, {}, fallback_fp32=False)
    assert list(tmp_path.iterdir()) == []


def test_no_check_windows(model, tmp_path):
    """A run without dev windows (export of a tiny run) still exports; the check is reported as not run."""
    out = export_weights(model, "xlstm_seq", tmp_path / "w", "1", "fp16", _docstring, torch.zeros(0, 3, 4096),
                         0.02, {})
    assert out["windows"] == 0 and out["precision"] == "fp16"
