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


def test_summary_checks_compare_like_with_like():
    """Segment cost is against the same backend's whole graph, overhead against the same backend's full depth, and
    the exit comparison only counts exit settings that keep the best baseline's quality (within 0.005)."""
    def r(speedup):
        return {"speedup_vs_st_torch": speedup}

    cell = {"results": {
        "st torch": r(1.0), "whole-graph onnx": r(2.0), "whole-graph onnx-int8": r(3.0),
        "st_leap torch full": r(1.0), "st_leap torch monitor": r(0.98),
        "st_leap onnx full": r(1.9), "st_leap onnx monitor": r(1.9), "st_leap onnx theta=0.9": r(4.0),
        "st_leap onnx-int8 full": r(2.5), "st_leap onnx-int8 theta=0.95": r(5.0), "st_leap onnx-int8 theta=0.9": r(9.0),
    }}
    quality = {name: {"stsb_spearman": 0.82} for name in cell["results"]}
    quality["whole-graph onnx-int8"] = {"stsb_spearman": 0.818}
    quality["st_leap onnx-int8 theta=0.9"] = {"stsb_spearman": 0.70}  # fast but not equal quality
    summary = backends_bench.summarise(cell, quality)
    assert summary["segment_cost"]["onnx"] == pytest.approx(2.0 / 1.9 - 1)
    assert summary["segment_cost"]["onnx-int8"] == pytest.approx(3.0 / 2.5 - 1)
    assert summary["monitor_overhead"]["torch"] == pytest.approx(1.0 / 0.98 - 1) and summary["monitor_overhead"]["onnx"] == 0
    best = summary["exit_vs_best"]
    assert best["best_sentence_transformers_side"] == "whole-graph onnx-int8"
    assert best["fastest_st_leap_at_equal_quality"] == "st_leap onnx-int8 theta=0.95" and best["ratio"] == pytest.approx(5 / 3)
    quality["st_leap onnx-int8 theta=0.95"] = quality["st_leap onnx theta=0.9"] = {"stsb_spearman": 0.80}
    assert backends_bench.summarise(cell, quality)["exit_vs_best"]["ratio"] is None


def test_resume_keeps_earlier_cells_only_for_the_same_settings(tmp_path):
    import json

    info = {"model": "m", "theta": 0.9, "repeats": 5, "sentences": 128, "passages": 64}
    cell = {"threads": 1, "texts": "STS-B sentences", "batch_size": 1, "results": {}, "summary": {}}
    earlier = {"run_info": dict(info), "results": {"cells": [cell], "quality": {"st torch": {"stsb_spearman": 0.8}},
                                                   "unavailable": {"st onnx": "ImportError"}},
               "meta_info": {"command": "first command"}}
    (tmp_path / "b.json").write_text(json.dumps(earlier))
    cells, unavailable, quality_rows, commands = backends_bench.resumed(str(tmp_path / "b"), info)
    assert cells == [cell] and unavailable == {"st onnx": "ImportError"} and commands == ["first command"]
    assert quality_rows == {"st torch": {"stsb_spearman": 0.8}}
    with pytest.raises(SystemExit, match="measured with .*'theta': 0.9"):
        backends_bench.resumed(str(tmp_path / "b"), {**info, "theta": 0.95})
    with pytest.raises(SystemExit, match="does not exist"):
        backends_bench.resumed(str(tmp_path / "missing"), info)


def test_quality_scores_stock_and_early_exit_models_alike(smooth_bert_dir):
    """STS-B test through sentence-transformers' own evaluator (stock side) and st_leap's (exit side): the same
    weights at full depth score the same; an exit setting reports its E[layers]."""
    from st_leap.model import from_pretrained

    depth = 4
    settings = {"st torch": {}, "st_leap torch full": {"exit_threshold": None}, "st_leap torch theta=0.5":
                {"exit_threshold": 0.5, "exit_min_layer": 2}}
    leap = from_pretrained(smooth_bert_dir)
    models = {"st torch": stock_model(smooth_bert_dir), "st_leap torch full": leap, "st_leap torch theta=0.5": leap}
    rows = backends_bench.quality(settings, models, scifact=False)
    assert rows["st torch"]["stsb_spearman"] == pytest.approx(rows["st_leap torch full"]["stsb_spearman"], abs=1e-6)
    assert "expected_layers" not in rows["st torch"]
    assert rows["st_leap torch full"]["expected_layers"] == pytest.approx(depth)
    assert 2 <= rows["st_leap torch theta=0.5"]["expected_layers"] < depth


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_depth_graph_is_exported_again_for_another_model(tmp_path):
    """The timed depth graph of ``benchmarks.backends.export`` is the model's own: a graph another model left in the
    same export folder is replaced, never timed in its place."""
    pytest.importorskip("onnxruntime")
    import st_leap
    from benchmarks.backends import export as export_bench
    from tests.conftest import build_tiny_model_dir

    paths = [build_tiny_model_dir(tmp_path / name, "bert", seed=seed) for name, seed in (("a", 1), ("b", 2))]
    cuts = [st_leap.from_pretrained(p, device="cpu").encode(SENTENCES, truncate_layers=2) for p in paths]
    assert _cosines(*cuts).min() < 0.9, "the two models must tell their graphs apart"
    for path, cut in zip(paths, cuts):
        _, models = export_bench.build(path, 2, "onnx", 1, tmp_path / "graphs")
        graph = models["export onnx-int8 depth=2"].encode(SENTENCES)
        assert _cosines(graph, cut).min() > 0.95, f"the depth-2 graph timed for {path} is not that model's"
