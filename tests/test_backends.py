"""Early exit on ONNX Runtime and OpenVINO (issue 18): the segmented export gives the torch path's exit layers and
embeddings within the backend's tolerance, caches the export, and keeps the exit defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import st_leap
from tests.conftest import SENTENCES
from tests.test_modules import mixed_threshold


@pytest.fixture(scope="module")
def saved_leap(smooth_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("backend_model") / "leap"
    st_leap.from_pretrained(smooth_bert_dir, exit_min_layer=2).save(str(folder))
    return str(folder)


def _outputs(model, theta):
    out = model.encode(SENTENCES, exit_threshold=theta, output_value=None, batch_size=4)
    return [int(o["exit_layer"]) for o in out], torch.stack([o["sentence_embedding"] for o in out]).numpy()


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_segmented_export_matches_the_torch_path(saved_leap, backend):
    pytest.importorskip("onnxruntime" if backend == "onnx" else "openvino")
    reference = st_leap.load(saved_leap)
    theta = mixed_threshold(reference, SENTENCES, min_layer=2)
    model = st_leap.from_pretrained(saved_leap, backend=backend)
    assert model[0].exit_backend == backend and model[0].exit_min_layer == 2
    for setting in (None, theta):
        want_layers, want = _outputs(reference, setting)
        got_layers, got = _outputs(model, setting)
        assert got_layers == want_layers
        # ONNX Runtime matches torch to 1e-4; OpenVINO's CPU kernels differ by up to ~5e-4 on these values (~1)
        np.testing.assert_allclose(got, want, atol=1e-4 if backend == "onnx" else 2e-3)
    assert 0 < sum(layer < model[0].num_layers for layer in got_layers) < len(SENTENCES)
    export = model[0]._export_dir
    assert export.startswith(saved_leap) and (__import__("pathlib").Path(export) / "export.json").exists()
    mtime = (__import__("pathlib").Path(export) / "export.json").stat().st_mtime
    st_leap.from_pretrained(saved_leap, backend=backend)  # cached: not exported again
    assert (__import__("pathlib").Path(export) / "export.json").stat().st_mtime == mtime


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_int8_segments_run_close_to_fp32(saved_leap, backend):
    pytest.importorskip("onnxruntime" if backend == "onnx" else "nncf")
    reference = st_leap.load(saved_leap)
    model = st_leap.from_pretrained(saved_leap, backend=backend, quantize="int8")
    _, want = _outputs(reference, None)
    layers, got = _outputs(model, None)
    assert layers == [model[0].num_layers] * len(SENTENCES)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.95, cos


def test_backend_arguments_are_checked_before_loading(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of"):
        st_leap.from_pretrained(str(tmp_path / "missing"), backend="tensorrt")
    with pytest.raises(ValueError, match="quantize applies to backend='onnx' or 'openvino'"):
        st_leap.from_pretrained(str(tmp_path / "missing"), quantize="int8")


def test_segments_do_not_spin_but_a_single_graph_may(saved_leap):
    """The segments run one after another: ONNX Runtime's busy-waiting threads of a finished segment would take the
    cores from the next one, so the segmented encoder turns spinning off; a lone graph keeps ONNX Runtime's default."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import SegmentBackbone, default_export_dir, open_runner

    model = st_leap.from_pretrained(saved_leap, backend="onnx")
    folder = default_export_dir(saved_leap, "onnx", None)
    key = "session.intra_op.allow_spinning"

    def spinning(runner):
        return runner.session.get_session_options().get_session_config_entry(key)

    backbone = SegmentBackbone(folder, "onnx", "bert", threads=2)
    assert {spinning(layer.runner) for layer in backbone.layers} == {"0"}
    assert spinning(open_runner(folder / "layer_00.onnx", "onnx", 2)) == "1"
    # the same numbers either way
    spin_on = SegmentBackbone(folder, "onnx", "bert", threads=2, spin=True)
    hidden, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)
    torch.testing.assert_close(spin_on.layers[0](hidden, mask), backbone.layers[0](hidden, mask))
    assert model.encode(SENTENCES).shape[0] == len(SENTENCES)


# ------------------------------------------------------------------------------------------ export of the pick
def _graph_files(folder):
    return sorted(p.name for p in __import__("pathlib").Path(folder).rglob("*") if p.suffix in (".onnx", ".xml"))


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_static_depth_exports_one_graph_that_matches_torch(tiny_bert_dir, tmp_path, backend):
    pytest.importorskip("onnxruntime" if backend == "onnx" else "openvino")
    from st_leap.backends import export, read_export_info

    model = st_leap.from_pretrained(tiny_bert_dir, truncate_layers=2)
    model.append(__import__("sentence_transformers").base.modules.Normalize())
    out = export(model, tmp_path / "exported", backend)
    assert _graph_files(out) == [f"model.{'onnx' if backend == 'onnx' else 'xml'}"]
    info = read_export_info(out)
    assert info["kind"] == "static" and info["depth"] == 2 and info["roles"] == ["query", "document", "default"]
    assert "depth | 2 of 4" in (out / "README.md").read_text()
    served = st_leap.load(str(out))
    assert type(served[0]).__name__ == "ExportedEncoder" and len(served) == 1
    want = model.encode(SENTENCES, batch_size=4)
    for encode in (served.encode, served.encode_query, served.encode_document):
        np.testing.assert_allclose(encode(SENTENCES, batch_size=4), want, atol=2e-3)


def test_static_export_applies_the_exit_map_of_its_depth(tiny_bert_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    exit_maps = pytest.importorskip("st_leap.exit_maps")
    from st_leap.backends import export, read_export_info

    model = st_leap.from_pretrained(tiny_bert_dir, truncate_layers={"query": 3, "document": None, "default": None})
    model.append(__import__("sentence_transformers").base.modules.Normalize())
    maps = exit_maps.ExitMaps(num_layers=4, in_features=model.get_embedding_dimension(), normalize=True)
    torch.manual_seed(0)
    maps.set_map(3, torch.randn(maps.in_features, maps.in_features), torch.randn(maps.in_features))
    model.append(maps)
    out = export(model, tmp_path / "query", "onnx", role="query")
    info = read_export_info(out)
    assert info["exit_map"] and info["depth"] == 3 and info["roles"] == ["query"]
    served = st_leap.load(str(out))
    np.testing.assert_allclose(
        served.encode_query(SENTENCES, batch_size=4), model.encode_query(SENTENCES, batch_size=4), atol=2e-3
    )
    with pytest.raises(ValueError, match="role='document'"):
        served.encode_document(SENTENCES)
    with pytest.raises(ValueError, match="depth 3"):
        st_leap.load(str(out), truncate_layers=2)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_int8_static_export_runs_for_every_role(tiny_bert_dir, tmp_path, backend):
    pytest.importorskip("onnxruntime" if backend == "onnx" else "nncf")
    from st_leap.backends import export

    model = st_leap.from_pretrained(tiny_bert_dir)
    out = export(model, tmp_path / "int8", backend, quantize="int8", depth=1)
    assert len(_graph_files(out)) == 1
    served = st_leap.load(str(out))
    for encode in (served.encode, served.encode_query, served.encode_document):
        assert encode(SENTENCES[:3]).shape == (3, model.get_embedding_dimension())


def test_a_threshold_still_exports_segments(saved_leap, tmp_path):
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export, read_export_info

    reference = st_leap.load(saved_leap)
    theta = mixed_threshold(reference, SENTENCES, min_layer=2)
    model = st_leap.load(saved_leap, exit_threshold=theta)
    out = export(model, tmp_path / "segments", "onnx")
    info = read_export_info(out)
    assert info["kind"] == "segments"
    assert _graph_files(out) == ["embeddings.onnx", *(f"layer_{i:02d}.onnx" for i in range(model[0].num_layers))]
    served = st_leap.load(str(out))
    assert served[0].exit_backend == "onnx" and served[0].exit_threshold == theta
    want_layers, want = _outputs(model, theta)
    got_layers, got = _outputs(served, theta)
    assert got_layers == want_layers
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_export_refuses_a_folder_that_holds_something_else(tiny_bert_dir, tmp_path):
    from st_leap.backends import export

    (tmp_path / "modules.json").write_text("[]")
    with pytest.raises(ValueError, match="not empty"):
        export(st_leap.from_pretrained(tiny_bert_dir), tmp_path, "onnx")
