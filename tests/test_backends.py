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


# ------------------------------------------------------------------ a query encoder for a kept index (a Router)
@pytest.fixture(scope="module")
def router_model(tmp_path_factory):
    """A Router model as ``fit_query_encoder`` saves it, from tiny encoders: queries -> a 2-layer student (the
    index model's layers 1 and 4, with an exit map), documents and plain encode -> the 4-layer index model."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    from st_leap.exit_maps import fit_exit_maps
    from st_leap.query_encoder import build_router, init_student
    from tests.conftest import WORDS, build_tiny_model_dir

    index_dir = build_tiny_model_dir(tmp_path_factory.mktemp("router_index"), "bert", num_layers=4)
    index = SentenceTransformer(index_dir, device="cpu")
    index.append(Normalize())
    student = init_student(index_dir, 2, "spread")
    rng = __import__("random").Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(200)]
    fit_exit_maps(student, texts, target_embeddings=index.encode(texts), show_progress_bar=False)
    folder = tmp_path_factory.mktemp("router") / "qe"
    build_router(student, index).save(str(folder))
    return st_leap.load(str(folder), device="cpu")


def _cosines(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


ROLE_CALLS = {"query": "encode_query", "document": "encode_document", "default": "encode"}


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_router_export_serves_every_role_as_the_source_model(router_model, tmp_path, quantize):
    """Without a role, the export of a query encoder holds a query graph and a document graph: every role of the
    folder matches the same role of the source model (fp32 cosine >= 0.999; int8 >= 0.99 on these tiny random
    encoders), and queries and documents really go to different encoders."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export, read_export_info

    out = export(router_model, tmp_path / "qe-onnx", "onnx", quantize=quantize)
    info = read_export_info(out)
    assert info["kind"] == "routes" and info["roles"] == ["query", "document", "default"]
    assert read_export_info(out / "query")["depth"] == 2 and read_export_info(out / "document")["depth"] == 4
    served = st_leap.load(str(out))
    floor = 0.999 if quantize is None else 0.99
    for role, call in ROLE_CALLS.items():
        want = getattr(router_model, call)(SENTENCES, batch_size=4)
        got = getattr(served, call)(SENTENCES, batch_size=4)
        assert _cosines(got, want).min() >= floor, role
    # the two routes are different models: serving one for the other would be caught above
    assert _cosines(router_model.encode_query(SENTENCES), router_model.encode_document(SENTENCES)).min() < 0.99


def test_router_export_of_one_role_refuses_the_others(router_model, tmp_path):
    """``role="query"`` exports the shallow query graph alone: documents and plain encode raise, naming the role
    and what to export; ``role="document"`` exports the index model, and queries raise."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export, read_export_info

    query = st_leap.load(str(export(router_model, tmp_path / "q", "onnx", quantize="int8", role="query")))
    assert read_export_info(tmp_path / "q")["roles"] == ["query"]
    assert _cosines(query.encode_query(SENTENCES), router_model.encode_query(SENTENCES)).min() >= 0.99
    for call in ("encode_document", "encode"):
        with pytest.raises(ValueError, match="query side of a query encoder.*without a role"):
            getattr(query, call)(SENTENCES)
    document = st_leap.load(str(export(router_model, tmp_path / "d", "onnx", role="document")))
    assert read_export_info(tmp_path / "d")["roles"] == ["document", "default"]
    for call in ("encode_document", "encode"):
        assert _cosines(getattr(document, call)(SENTENCES), getattr(router_model, call)(SENTENCES)).min() >= 0.999
    with pytest.raises(ValueError, match="'query'"):
        document.encode_query(SENTENCES)
    with pytest.raises(ValueError, match="full depth"):
        export(router_model, tmp_path / "d2", "onnx", role="document", depth=2)


def test_an_export_folder_reused_for_one_route_keeps_nothing_of_the_other(router_model, tmp_path):
    """Exporting into a folder that held both routes, then only the query side, leaves no document graph behind."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export

    out = tmp_path / "reused"
    export(router_model, out, "onnx")
    assert (out / "document").is_dir()
    export(router_model, out, "onnx", role="query")
    assert not (out / "document").exists() and not (out / "query").exists()
    with pytest.raises(ValueError, match="query side"):
        st_leap.load(str(out)).encode_document(SENTENCES)


def test_cli_export_of_a_query_encoder(router_model, tmp_path, capsys):
    """``st-leap export QE --backend onnx --quantize int8 --role query`` writes the query side only, and without
    --role both routes."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import read_export_info
    from st_leap.cli import main

    source = tmp_path / "qe"
    router_model.save(str(source))
    assert main(["export", str(source), "--backend", "onnx", "--quantize", "int8", "--role", "query", "--out", str(tmp_path / "q")]) == 0
    assert read_export_info(tmp_path / "q")["roles"] == ["query"]
    assert main(["export", str(source), "--backend", "onnx", "--out", str(tmp_path / "both")]) == 0
    assert read_export_info(tmp_path / "both")["kind"] == "routes"
    assert "one graph per route" in capsys.readouterr().out


# ------------------------------------------------------------------ every supported architecture, MPNet included
@pytest.mark.parametrize("depth", [2, 4])
def test_static_export_of_every_architecture_matches_torch(tiny_model_dir, tmp_path, depth):
    """BERT, RoBERTa, XLM-R, MPNet (its relative position bias computed inside the graph) and DistilBERT export as
    one fp32 graph that gives the torch model's embeddings within 1e-4 at a cut and at full depth."""
    pytest.importorskip("onnxruntime")
    from sentence_transformers.base.modules import Normalize

    from st_leap.backends import export

    model = st_leap.from_pretrained(tiny_model_dir, truncate_layers=depth)
    model.append(Normalize())
    served = st_leap.load(str(export(model, tmp_path / "graph", "onnx")))
    want = model.encode(SENTENCES, batch_size=4)
    np.testing.assert_allclose(served.encode(SENTENCES, batch_size=4), want, atol=1e-4)
    # the cut is really served: another depth gives other embeddings
    other = model.encode(SENTENCES, batch_size=4, truncate_layers=3)
    assert np.abs(other - want).max() > 1e-2


@pytest.fixture(scope="module", params=["mpnet", "distilbert"])
def smooth_model_dir(request, tmp_path_factory):
    from tests.conftest import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp(f"smooth_{request.param}"), request.param, initializer_range=0.1)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_segmented_export_of_mpnet_and_distilbert_matches_the_torch_path(smooth_model_dir, backend):
    """Per-sample exit on segments (one graph per layer; MPNet's position bias inside each layer's graph) makes
    the torch path's exit decisions, with embeddings within 1e-4 (ONNX Runtime) / 2e-3 (OpenVINO)."""
    pytest.importorskip("onnxruntime" if backend == "onnx" else "openvino")
    reference = st_leap.from_pretrained(smooth_model_dir, exit_min_layer=2)
    theta = mixed_threshold(reference, SENTENCES, min_layer=2)
    served = st_leap.from_pretrained(smooth_model_dir, exit_min_layer=2, backend=backend)
    want_layers, want = _outputs(reference, theta)
    got_layers, got = _outputs(served, theta)
    assert got_layers == want_layers and len(set(want_layers)) > 1
    np.testing.assert_allclose(got, want, atol=1e-4 if backend == "onnx" else 2e-3)
