"""The backends benchmark's stand-ins for sentence-transformers' own ``backend="onnx"`` / ``"openvino"`` compute what
the stock torch model computes (fp32), and close to it at int8, so their speed-ups compare like with like."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.backends import run as backends_bench
from st_leap.backends import open_runner
from tests.conftest import SENTENCES, stock_model


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_whole_graph_stand_in_matches_stock(smooth_bert_dir, tmp_path, backend):
    pytest.importorskip("onnxruntime" if backend == "onnx" else "nncf")
    pytest.importorskip("onnxruntime")  # the ONNX file is the OpenVINO conversion's input too
    want = stock_model(smooth_bert_dir).encode(SENTENCES)
    fp32 = backends_bench.whole_graph_model(smooth_bert_dir, tmp_path, backend, None, threads=1)
    np.testing.assert_allclose(fp32.encode(SENTENCES), want, atol=1e-4 if backend == "onnx" else 2e-3)
    int8 = backends_bench.whole_graph_model(smooth_bert_dir, tmp_path, backend, "int8", threads=1).encode(SENTENCES)
    cos = (int8 * want).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.95 and not np.allclose(int8, want, atol=1e-6), "int8 must be close, and really quantised"


def test_open_runner_refuses_torch(tmp_path):
    with pytest.raises(ValueError, match="backend must be 'onnx' or 'openvino'"):
        open_runner(tmp_path / "model.onnx", "torch", 1)
