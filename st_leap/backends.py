"""Early exit on ONNX Runtime and OpenVINO: the encoder exported as segments, the exit loop in Python between them.

No exporter supports a data-dependent exit loop, so the encoder is exported piece by piece with the ecosystem's
own tools: the embeddings, then each layer on its own (``torch.onnx.export``; OpenVINO converts the ONNX files
with ``openvino.convert_model``). The layer loop of :class:`~st_leap.EarlyExitTransformer` then calls one
segment per layer and keeps doing everything else itself: the exit rule of :mod:`st_leap.exit_policy`, batch
compaction and padding trim. Pooling and the rest of the sentence-transformers pipeline run as usual on the exit
layer's hidden states.

INT8: ``quantize="int8"`` applies ONNX Runtime's dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``,
int8 weights with one scale per output channel, activations quantised on the fly) to the ONNX segments, and NNCF's
int8 weight compression (``nncf.compress_weights``) to the OpenVINO ones.

Exports are cached in the model folder, ``<model>/st_leap_export/<backend>[-int8]/``, or under the st_leap cache
(``$ST_LEAP_CACHE``, else ``~/.cache/st_leap``) for a Hub model, and reused while ``export.json`` matches the model.
Supported: the BERT family (BERT, MiniLM, RoBERTa, XLM-R, CamemBERT), MPNet and DistilBERT. Loading is one call,
``st_leap.from_pretrained(path, backend="onnx")``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import InputModule, Router
from torch import Tensor, nn

from st_leap.backbone import Backbone
from st_leap.exit_policy import ROLE_TASKS, role_of

BACKENDS = ("torch", "onnx", "openvino")
QUANTIZATIONS = (None, "int8")
SEGMENT_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "mpnet", "distilbert")
EXPORT_VERSION = 2  # bump when the segment graphs change: older exports are then rebuilt


def check_backend(backend: str, quantize: str | None) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if backend == "torch" and quantize is not None:
        raise ValueError("quantize applies to backend='onnx' or 'openvino'; for torch use torch.ao.quantization")


class _EmbeddingSegment(nn.Module):
    """The encoder's embeddings, as :class:`~st_leap.backbone.Backbone` computes them for its architecture
    (``token_type_ids`` is read by the BERT family only)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf
        self.backbone = Backbone(hf)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.backbone.embed({"input_ids": input_ids, "token_type_ids": token_type_ids})


class _LayerSegment(nn.Module):
    """One encoder layer taking the ``(B, T)`` attention mask; the additive mask is built inside the graph, and so
    is MPNet's relative position bias (from the running hidden states, so the layer works on any batch)."""

    def __init__(self, layer: nn.Module, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.backbone = backbone if backbone is not None and backbone.model_type == "mpnet" else None
        if self.backbone is not None:  # a submodule, so the exporter takes its weights as parameters, not constants
            self.relative_attention_bias = backbone.model.encoder.relative_attention_bias

    def forward(self, hidden: Tensor, attention_mask: Tensor, **kwargs: Tensor) -> Tensor:
        additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        if self.backbone is not None and not kwargs:
            kwargs = self.backbone.layer_kwargs(hidden)
        out = self.layer(hidden, additive, **kwargs)
        return out[0] if isinstance(out, tuple) else out


def model_fingerprint(module: Any) -> str:
    """A short hash of the encoder's weights: an export is reused only for the weights it was made from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.auto_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_export_dir(model_path: str | None, backend: str, quantize: str | None) -> Path:
    name = f"{backend}-{quantize}" if quantize else backend
    if model_path and Path(model_path).is_dir() and os.access(model_path, os.W_OK):
        return Path(model_path) / "st_leap_export" / name
    root = Path(os.environ.get("ST_LEAP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "st_leap")
    key = hashlib.sha256(str(model_path).encode()).hexdigest()[:12]
    return root / "exports" / key / name


def _export_onnx(module: nn.Module, args: tuple[Tensor, ...], names: list[str], path: Path, dynamic: dict) -> None:
    import warnings

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    tmp.replace(path)


#: Weight matrices kept in fp32 by the ONNX Runtime int8 export, per architecture (node-name fragments of the
#: graph's MatMuls). MPNet's feed-forward output projection reads GELU activations with large outliers, and ONNX
#: Runtime's dynamic int8 quantises activations with one scale per tensor: quantised, all-mpnet-base-v2's whole
#: graph fell to mean cosine 0.882 to fp32 on the STS-B dev sentences; with these 12 of its 72 weight MatMuls in
#: fp32, 0.990 (``benchmarks/results/backends/int8_mpnet_dev.md``, the signal that chose it; STS-B test sentences:
#: 0.879 and 0.989, ``int8_mpnet.md``). Cosine to fp32 only: no similarity score was read.
INT8_FP32_NODES = {"mpnet": ("/output/dense/",)}


def convert_onnx(
    onnx_file: str | Path,
    target: str | Path,
    backend: str,
    quantize: str | None = None,
    per_channel: bool = True,
    model_type: str | None = None,
) -> Path:
    """An fp32 ONNX graph made ready for ``backend``: ONNX Runtime's dynamic int8 quantisation
    (``quantize_dynamic``) for ``"onnx"`` + ``"int8"``; OpenVINO's ``convert_model`` (with NNCF's int8 weight
    compression for ``"int8"``) for ``"openvino"``. Returns ``target``.

    ``per_channel`` (ONNX Runtime int8): one weight scale per output channel instead of one per tensor. It keeps a
    shallow encoder with an exit map much closer to fp32 (mean cosine 0.994 instead of 0.945 at depth 3 of our
    mapped query encoder on STS-B test sentences; ``docs/backends.md``). ``model_type`` (the encoder's, e.g.
    ``"mpnet"``) keeps the MatMuls of :data:`INT8_FP32_NODES` in fp32 for ONNX Runtime int8."""
    check_backend(backend, quantize)
    if backend == "onnx" and quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        keep = int8_fp32_nodes(onnx_file, model_type)
        quantize_dynamic(
            str(onnx_file), str(target), weight_type=QuantType.QInt8, per_channel=per_channel, nodes_to_exclude=keep
        )
    elif backend == "openvino":
        import openvino as ov

        ov_model = ov.convert_model(str(onnx_file))
        if quantize == "int8":
            import nncf

            ov_model = nncf.compress_weights(ov_model)  # int8 weights (NNCF's default mode)
        ov.save_model(ov_model, str(target))
    else:
        raise ValueError(f"nothing to convert for backend={backend!r}, quantize={quantize!r}")
    return Path(target)


def int8_fp32_nodes(onnx_file: str | Path, model_type: str | None) -> list[str]:
    """The MatMul nodes of ``onnx_file`` that the int8 export of a ``model_type`` encoder keeps in fp32
    (:data:`INT8_FP32_NODES`)."""
    patterns = INT8_FP32_NODES.get(model_type or "", ())
    if not patterns:
        return []
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(p in n.name for p in patterns)]


def export_segments(module: Any, folder: str | Path, backend: str, quantize: str | None = None) -> Path:
    """Export ``module``'s encoder (an :class:`~st_leap.EarlyExitTransformer`) as segments into ``folder``; returns
    the folder. Reuses an export whose ``export.json`` matches the weights, backend and quantisation."""
    check_backend(backend, quantize)
    if module._backbone.model_type not in SEGMENT_MODEL_TYPES:
        raise ValueError(
            f"Segmented export supports model types {list(SEGMENT_MODEL_TYPES)}, got {module._backbone.model_type!r}; "
            "use backend='torch' for this model"
        )
    folder = Path(folder)
    meta = {
        "export_version": EXPORT_VERSION,
        "backend": backend,
        "quantize": quantize,
        "num_layers": module.num_layers,
        "fingerprint": model_fingerprint(module),
    }
    meta_path = folder / "export.json"
    if meta_path.exists():
        try:
            if json.loads(meta_path.read_text()) == meta:
                return folder
        except json.JSONDecodeError:
            pass
    folder.mkdir(parents=True, exist_ok=True)
    import copy

    hf = copy.deepcopy(module.auto_model).eval().float()
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")  # plain matmul + softmax: exports and quantises everywhere
    backbone = Backbone(hf)
    layers = backbone.layers
    ids = torch.ones(2, 7, dtype=torch.long)
    hidden = torch.randn(2, 7, hf.config.hidden_size)
    mask = torch.ones(2, 7, dtype=torch.long)
    seq = {0: "batch", 1: "sequence"}
    onnx_dir = folder if backend == "onnx" and quantize is None else folder / "fp32"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    files = ["embeddings", *(f"layer_{i:02d}" for i in range(len(layers)))]
    with torch.no_grad():
        _export_onnx(
            _EmbeddingSegment(hf),
            (ids, torch.zeros_like(ids)),
            ["input_ids", "token_type_ids"],
            onnx_dir / "embeddings.onnx",
            {"input_ids": seq, "token_type_ids": seq, "hidden": {0: "batch", 1: "sequence"}},
        )
        for i, layer in enumerate(layers):
            _export_onnx(
                _LayerSegment(layer, backbone),
                (hidden, mask),
                ["hidden_in", "attention_mask"],
                onnx_dir / f"layer_{i:02d}.onnx",
                {"hidden_in": seq, "attention_mask": seq, "hidden": seq},
            )
    if backend != "onnx" or quantize is not None:
        for name in files:
            suffix = ".onnx" if backend == "onnx" else ".xml"
            convert_onnx(onnx_dir / f"{name}.onnx", folder / f"{name}{suffix}", backend, quantize, model_type=backbone.model_type)
    _write_json(meta, meta_path)  # last: a folder without it is rebuilt
    return folder


def _write_json(data: dict[str, Any], path: Path) -> None:
    """A small JSON file, written to a temporary name and renamed into place (the layer loop's side of st_leap
    writes its own metadata: the report writers of :mod:`st_leap.reporting` stay out of it)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


class _OnnxRunner:
    def __init__(self, path: Path, threads: int, spin: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.session.run(None, dict(zip(self.names, arrays)))[0]


class _OpenVINORunner:
    def __init__(self, path: Path, threads: int, spin: bool = True) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.names = [port.any_name for port in self.compiled.inputs]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.compiled(dict(zip(self.names, arrays)))[0]


def open_runner(path: str | Path, backend: str, threads: int, spin: bool = True) -> Any:
    """One exported graph (``.onnx`` for ``"onnx"``, ``.xml`` for ``"openvino"``) as a callable
    ``(*arrays) -> first output``, with its inputs in graph order, on ``threads`` CPU threads.

    ``spin=False`` stops ONNX Runtime's intra-op threads from busy-waiting after each run (its
    ``session.intra_op.allow_spinning``; OpenVINO ignores it). One session may spin; a chain of sessions run one
    after another (the segments) must not, or each finished session's spinning threads take the cores from the
    next one."""
    check_backend(backend, None)
    if backend == "torch":
        raise ValueError("open_runner runs exported graphs: backend must be 'onnx' or 'openvino'")
    return (_OnnxRunner if backend == "onnx" else _OpenVINORunner)(Path(path), threads, spin)


def _array(tensor: Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


class SegmentBackbone:
    """The layer loop's view of an exported encoder: ``embed``, ``layers`` (callables ``(hidden, mask) ->
    hidden``), the ``(B, T)`` mask as the layers' attention mask, no per-layer extras."""

    def __init__(
        self, folder: str | Path, backend: str, model_type: str, threads: int | None = None, spin: bool = False
    ) -> None:
        folder = Path(folder)
        threads = threads or torch.get_num_threads()
        suffix = ".onnx" if backend == "onnx" else ".xml"
        meta = json.loads((folder / "export.json").read_text())
        self.model_type = model_type
        self.backend = backend
        # spin=False by default: the segments run one after another, and spinning threads of the one that just
        # finished would compete with the next (measured: benchmarks/results/backends/, 2 threads)
        self._embed = open_runner(folder / f"embeddings{suffix}", backend, threads, spin)
        self.layers = [
            _SegmentLayer(open_runner(folder / f"layer_{i:02d}{suffix}", backend, threads, spin))
            for i in range(meta["num_layers"])
        ]

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        ids = features["input_ids"]
        types = features.get("token_type_ids")
        types = torch.zeros_like(ids) if types is None else types
        return torch.from_numpy(self._embed(_array(ids), _array(types)))

    def layer_mask(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return mask

    def layer_kwargs(self, hidden: Tensor) -> dict[str, Tensor]:
        return {}


class _SegmentLayer:
    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def __call__(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return torch.from_numpy(self.runner(_array(hidden), _array(mask).astype(np.int64)))


# ------------------------------------------------------------------------------------------ export of the pick
EXPORT_FILE = "st_leap_export.json"  # the exported folder's metadata (and the ExportedEncoder's config)


class _StaticGraph(nn.Module):
    """Embeddings, the first ``depth`` layers and the post-transformer pipeline (pooling, dense, normalize, the
    exit map of layer ``depth``) as one module: ``(input_ids, attention_mask, token_type_ids) -> embedding``. The
    architecture's own pieces (embeddings, MPNet's relative position bias, computed once for all layers as the
    model does) come from :class:`~st_leap.backbone.Backbone`."""

    def __init__(self, hf: nn.Module, post: list[nn.Module], depth: int) -> None:
        super().__init__()
        self.embed = _EmbeddingSegment(hf)
        self.layers = nn.ModuleList(_LayerSegment(layer) for layer in Backbone(hf).layers[:depth])
        self.post = nn.ModuleList(post)
        self.depth = depth

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        hidden = self.embed(input_ids, token_type_ids)
        extra = self.embed.backbone.layer_kwargs(hidden)  # MPNet: the position bias, shared by every layer
        for layer in self.layers:
            hidden = layer(hidden, attention_mask, **extra)
        features: dict[str, Any] = {"token_embeddings": hidden, "attention_mask": attention_mask}
        for module in self.post:
            if _is_exit_maps(module):
                features["sentence_embedding"] = module.map(features["sentence_embedding"], self.depth)
            else:
                features = module(features)
        return features["sentence_embedding"]


def _is_exit_maps(module: nn.Module) -> bool:
    """An :class:`st_leap.exit_maps.ExitMaps` (told by its interface: no import of the module)."""
    return type(module).__name__ == "ExitMaps" and hasattr(module, "map") and hasattr(module, "num_layers")


def _static_depth(module: Any, role: str | None, depth: int | None) -> int | None:
    """The static depth to export as one graph (``None``: per-sample exit, exported as segments)."""
    if depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= module.num_layers:
            raise ValueError(f"depth must be an int in [1, {module.num_layers}], got {depth!r}")
        return depth
    settings = module.exit_settings_for(ROLE_TASKS[role or "default"])
    if settings["exit_threshold"] is not None:
        return None
    return int(settings["truncate_layers"] or module.num_layers)


def _served_roles(module: Any, role: str | None, depth: int, explicit: bool) -> list[str]:
    """The roles whose exit setting the one graph computes."""
    if explicit:
        return [role] if role else list(ROLE_TASKS)
    served = []
    for name, task in ROLE_TASKS.items():
        settings = module.exit_settings_for(task)
        if settings["exit_threshold"] is None and int(settings["truncate_layers"] or module.num_layers) == depth:
            served.append(name)
    return served


def route_modules(model: SentenceTransformer, role: str | None = "default") -> list[nn.Module]:
    """The modules that encode the texts of ``role`` (``"query"``, ``"document"``, ``"default"`` or ``None`` for
    plain ``encode``): the route a ``Router`` model (a query encoder for a kept index) sends them to, or every
    module of any other model."""
    first = model[0] if len(model) else None
    if not isinstance(first, Router):
        return list(model)
    route = first._resolve_route(task=ROLE_TASKS[role_of(role)], modality=None)
    return list(first.sub_modules[route])


def route_side(model: SentenceTransformer, role: str) -> SentenceTransformer:
    """The modules a ``Router`` model runs for ``role`` as a model of its own, modules shared, not copied; any
    other model is returned as it is."""
    if not isinstance(model[0], Router):
        return model
    return SentenceTransformer(modules=route_modules(model, role), device=str(model.device))


def query_side(model: SentenceTransformer) -> SentenceTransformer:
    """The query encoder of a model built by :func:`st_leap.fit_query_encoder` (its ``Router``'s query route, modules
    shared, not copied) as a model of its own; any other model is returned as it is."""
    return route_side(model, "query")


def export(
    model: Any,
    out_dir: str | Path,
    backend: str,
    quantize: str | None = None,
    role: str | None = None,
    depth: int | None = None,
) -> Path:
    """Export an st_leap model's operating point to ``out_dir``, a folder that ``st_leap.load(out_dir)`` serves on
    ONNX Runtime or OpenVINO.

    A static depth (the role's ``truncate_layers`` with no ``exit_threshold``, full depth when neither is set, or
    ``depth``) is exported as **one** graph: the embeddings, the first ``depth`` layers and the post-transformer
    pipeline (pooling, dense, normalize and, when the model holds :class:`~st_leap.exit_maps.ExitMaps`, the map of
    layer ``depth``). The folder holds the graph, the tokenizer, ``st_leap_export.json`` and a ``README.md``;
    ``encode`` runs tokenizer -> graph, with no torch module in between. Roles whose setting differs from the
    exported one are refused at ``encode`` time. A per-sample exit (an ``exit_threshold``) keeps the segmented
    export (:func:`export_segments`): the model is saved with its exit settings and its segments, and loads on
    ``backend`` with the exit loop as usual.

    Args:
        model: An st_leap ``SentenceTransformer`` (first module an :class:`~st_leap.EarlyExitTransformer`), or a
            query encoder for a kept index (:func:`st_leap.query_encoder.fit_query_encoder`, a ``Router``): without
            ``role`` one graph per route (``query/``: the query encoder at its depth or ``depth``; ``document/``:
            the index model whole), loaded back as a ``Router``, a drop-in for the whole model; with ``role`` that
            route alone, which refuses the other roles.
        out_dir: The folder to write (created; files of an earlier export there are replaced).
        backend: ``"onnx"`` or ``"openvino"``.
        quantize: ``"int8"`` or ``None``.
        role: ``"query"``, ``"document"`` or ``"default"`` (plain ``encode``): whose exit setting to export;
            ``None`` is ``"default"`` (for a ``Router`` model: every route).
        depth: Export this static depth instead of the model's setting.

    Returns:
        ``out_dir`` as a ``Path``.

    Example:
        ::

            import st_leap
            from st_leap.backends import export

            model = st_leap.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", truncate_layers={"query": 3})
            export(model, "minilm-query-l3-int8", "onnx", quantize="int8", role="query")
            served = st_leap.load("minilm-query-l3-int8")
            embeddings = served.encode_query(["how do exits work?"])
    """
    check_backend(backend, quantize)
    if backend == "torch":
        raise ValueError("export writes an ONNX Runtime or OpenVINO folder: backend must be 'onnx' or 'openvino'")
    if role is not None and role not in ROLE_TASKS:
        raise ValueError(f"role must be one of {list(ROLE_TASKS)} or None, got {role!r}")
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and read_export_info(out) is None:
        raise ValueError(f"{out} is not empty and holds no st_leap export: export into a new folder")
    if isinstance(model[0], Router):  # a query encoder for a kept index: one graph per route
        return _export_routes(model, out, backend, quantize, role, depth)
    module = model[0]
    if not hasattr(module, "exit_settings_for"):
        raise ValueError("export needs an st_leap model; load it with st_leap.from_pretrained(...)")
    _check_graph_model_type(module)
    static = _static_depth(module, role, depth)
    info = _export_info(module, backend, quantize, role or "default")
    if static is None:
        _clear_export(out)
        return _export_segmented(model, out, info)
    return _export_static(model, out, static, _served_roles(module, role, static, depth is not None), info)


#: What each route of a query encoder for a kept index serves: queries the shallow encoder, documents and plain
#: ``encode`` the index model.
ROUTE_ROLES = {"query": ["query"], "document": ["document", "default"]}


def _export_info(module: Any, backend: str, quantize: str | None, role: str) -> dict[str, Any]:
    return {
        "export_version": EXPORT_VERSION,
        "backend": backend,
        "quantize": quantize,
        "role": role,
        "source_num_layers": len(Backbone(module.auto_model).layers),
        "fingerprint": model_fingerprint(module),
    }


def _check_graph_model_type(module: Any) -> None:
    model_type = Backbone(module.auto_model).model_type
    if model_type not in SEGMENT_MODEL_TYPES:
        raise ValueError(f"export supports model types {list(SEGMENT_MODEL_TYPES)}, got {model_type!r}")


def _clear_export(out: Path) -> None:
    """Remove what an earlier export left in ``out`` (its graphs and its route folders), so that nothing of another
    model or depth can be served from the folder."""
    import shutil

    for old in out.glob("model*.*"):
        old.unlink()
    for name in (*ROUTE_ROLES, "st_leap_export"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    if (out / EXPORT_FILE).exists():
        (out / EXPORT_FILE).unlink()


def _export_routes(
    model: SentenceTransformer, out: Path, backend: str, quantize: str | None, role: str | None, depth: int | None
) -> Path:
    """A query encoder for a kept index (a ``Router``): without ``role``, one graph per route (``query/``: the
    shallow encoder at its depth, or ``depth``; ``document/``: the index model at full depth), the folder a drop-in
    for the whole model; with ``role``, that route's graph alone, which refuses the other roles."""
    sides = list(ROUTE_ROLES) if role is None else ["query" if role == "query" else "document"]
    if depth is not None and "query" not in sides:
        raise ValueError("depth applies to the query side; the index model's documents run at full depth")
    graphs: dict[str, tuple[SentenceTransformer, int]] = {}
    for side in sides:
        sub = route_side(model, side)
        module = sub[0]
        _check_graph_model_type(module)
        if side == "query":
            if not hasattr(module, "exit_settings_for"):
                raise ValueError("the query route of this model is not an st_leap encoder; load it with st_leap.load")
            static = _static_depth(module, None, depth)
            if static is None:
                raise ValueError(
                    "the query side exits per sample (an exit_threshold): export a static depth with depth=N "
                    "(--depth N); per-sample exit of the query side runs on torch"
                )
        else:
            static = len(Backbone(module.auto_model).layers)  # the index model, whole
        graphs[side] = (sub, static)
    _clear_export(out)
    if role is not None:
        side = sides[0]
        sub, static = graphs[side]
        info = {**_export_info(sub[0], backend, quantize, role), "route_of": "query encoder for a kept index"}
        return _export_static(sub, out, static, ROUTE_ROLES[side], info)
    routes = {}
    for side, (sub, static) in graphs.items():
        info = {**_export_info(sub[0], backend, quantize, side), "route_of": "query encoder for a kept index"}
        _export_static(sub, out / side, static, ROUTE_ROLES[side], info)
        routes[side] = {"folder": side, "depth": static, "roles": ROUTE_ROLES[side]}
    info = {
        "export_version": EXPORT_VERSION, "backend": backend, "quantize": quantize, "role": "all", "kind": "routes",
        "routes": routes, "roles": [r for side in routes for r in ROUTE_ROLES[side]], "default_route": "document",
    }
    _write_json(info, out / EXPORT_FILE)
    (out / "README.md").write_text(_export_card(info), encoding="utf-8")
    return out


def _export_segmented(model: Any, out: Path, info: dict[str, Any]) -> Path:
    module = model[0]
    backend, quantize = info["backend"], info["quantize"]
    model.save(str(out))
    segments = Path("st_leap_export") / (f"{backend}-{quantize}" if quantize else backend)
    export_segments(module, out / segments, backend, quantize)
    settings = {role: module.exit_settings_for(task) for role, task in ROLE_TASKS.items()}
    info = {**info, "kind": "segments", "segments": segments.as_posix(), "roles": list(ROLE_TASKS), "exit_settings": settings}
    _write_json(info, out / EXPORT_FILE)
    card = out / "README.md"
    text = card.read_text(encoding="utf-8") if card.exists() else ""
    card.write_text(text.rstrip() + "\n\n" + _export_card(info), encoding="utf-8")
    return out


def _export_static(model: Any, out: Path, depth: int, roles: list[str], info: dict[str, Any]) -> Path:
    import copy

    module = model[0]
    backend, quantize = info["backend"], info["quantize"]
    post = [model[i] for i in range(1, len(model))]
    for extra in post:
        if type(extra).__name__ not in ("Pooling", "Dense", "Normalize", "ExitMaps"):
            raise ValueError(f"a static-depth export runs Pooling, Dense, Normalize and ExitMaps; got {type(extra).__name__}")
    out.mkdir(parents=True, exist_ok=True)
    _clear_export(out)  # a graph of an earlier export
    hf = copy.deepcopy(module.auto_model).eval().float()
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")
    graph = _StaticGraph(hf, copy.deepcopy(post), depth).eval()
    ids = torch.ones(2, 7, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    fp32 = out / "model.onnx" if backend == "onnx" and quantize is None else out / ".model-fp32.onnx"
    with torch.no_grad():
        _export_onnx(
            graph, (ids, ids.clone(), torch.zeros_like(ids)), ["input_ids", "attention_mask", "token_type_ids"], fp32,
            {"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "hidden": {0: "batch"}},
        )
    name = "model.onnx" if backend == "onnx" else "model.xml"
    if fp32.name != name:
        convert_onnx(fp32, out / name, backend, quantize, model_type=Backbone(module.auto_model).model_type)
        fp32.unlink()
    module.tokenizer.save_pretrained(str(out))
    dim = model.get_embedding_dimension()
    info = {
        **info,
        "kind": "static",
        "graph": name,
        "depth": depth,
        "roles": roles,
        "exit_map": any(_is_exit_maps(m) for m in post),
        "pipeline": [type(m).__name__ for m in post],
        "embedding_dimension": dim,
        "max_seq_length": module.max_seq_length,
        "do_lower_case": bool(getattr(module, "do_lower_case", False)),
        "prompts": dict(getattr(model, "prompts", {}) or {}),
    }
    _write_json(info, out / EXPORT_FILE)
    modules = [{"idx": 0, "name": "0", "path": "", "type": f"{ExportedEncoder.__module__}.{ExportedEncoder.__name__}"}]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    _write_json(
        {"prompts": info["prompts"], "default_prompt_name": getattr(model, "default_prompt_name", None),
         "similarity_fn_name": getattr(model, "similarity_fn_name", None) or "cosine", "model_type": "SentenceTransformer"},
        out / "config_sentence_transformers.json",
    )
    (out / "README.md").write_text(_export_card(info), encoding="utf-8")
    return out


def _export_card(info: dict[str, Any]) -> str:
    """The exported folder's model card: what was exported and how to load it."""
    quant = info["quantize"] or "none (fp32)"
    if info["kind"] == "routes":
        rows = "".join(
            f"| `{route['folder']}/` | {', '.join(route['roles'])} | {route['depth']} |\n" for route in info["routes"].values()
        )
        return (
            "## st_leap export\n\n"
            f"A query encoder for a kept index as one {info['backend']} graph per route ({quant} weights): queries run "
            "the shallow query encoder, documents and plain `encode` the index model, whole.\n\n"
            "| folder | roles | layers |\n| --- | --- | --- |\n" + rows + "\n"
            "Load it with `st_leap.load(path)`: `encode_query` and `encode_document` route as in the source model. "
            "Metadata in `st_leap_export.json`.\n"
        )
    if info["kind"] == "static":
        what = (
            f"One {info['backend']} graph (`{info['graph']}`): embeddings, the first {info['depth']} of "
            f"{info['source_num_layers']} layers, then {', '.join(info['pipeline']) or 'no post-processing'}"
            f"{' (the exit map of layer ' + str(info['depth']) + ')' if info['exit_map'] else ''}."
        )
        roles = ", ".join(info["roles"])
    else:
        what = (
            f"The encoder as {info['backend']} segments (`{info['segments']}`: embeddings and one graph per layer) "
            "with st_leap's per-sample exit loop between them."
        )
        roles = "all (each with its saved exit setting)"
    return (
        "## st_leap export\n\n"
        f"{what}\n\n"
        "| field | value |\n| --- | --- |\n"
        f"| backend | {info['backend']} |\n| quantization | {quant} |\n| exported role | {info['role']} |\n"
        f"| roles served | {roles} |\n"
        + (f"| depth | {info['depth']} of {info['source_num_layers']} |\n" if info["kind"] == "static" else "")
        + f"| weights fingerprint | {info['fingerprint']} |\n\n"
        "Load it with `st_leap.load(path)`; metadata in `st_leap_export.json`.\n"
    )


def read_export_info(folder: str | Path) -> dict[str, Any] | None:
    """The ``st_leap_export.json`` of an exported folder, or ``None`` when ``folder`` is not one."""
    path = Path(folder) / EXPORT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


class ExportedEncoder(InputModule):
    """A static-depth export served by ONNX Runtime or OpenVINO: tokenizer, then the one graph of :func:`export`
    (encoder layers, pooling, normalize, exit map), writing ``sentence_embedding`` directly.

    The only module of an exported folder's pipeline; ``st_leap.load(folder)`` builds it. ``encode`` for a role the
    graph does not compute (see ``roles`` in ``st_leap_export.json``) raises.

    Args:
        folder: The exported folder.
        threads: CPU threads of the runtime (default: torch's thread count).
        **info: The folder's ``st_leap_export.json``.
    """

    config_file_name: str = EXPORT_FILE
    forward_kwargs: set[str] = {"task"}
    save_in_root: bool = True

    def __init__(self, folder: str | Path, threads: int | None = None, **info: Any) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.info = info or read_export_info(folder) or {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.max_seq_length = self.info.get("max_seq_length") or 512
        self.threads = threads or torch.get_num_threads()
        self.runner = open_runner(self.folder / self.info["graph"], self.info["backend"], self.threads)

    def __getstate__(self) -> dict[str, Any]:
        # A runtime session does not pickle; the folder does: a process of sentence-transformers' multi-process pool
        # opens the graph again from it.
        return {key: value for key, value in super().__getstate__().items() if key != "runner"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.runner = open_runner(self.folder / self.info["graph"], self.info["backend"], self.threads)

    def get_config_dict(self) -> dict[str, Any]:
        return dict(self.info)

    def get_embedding_dimension(self) -> int:
        return int(self.info["embedding_dimension"])

    def preprocess(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> dict[str, Tensor]:
        pairs = [item if isinstance(item, (tuple, list)) else (item,) for item in inputs]
        columns = [[str(pair[i]) for pair in pairs] for i in range(len(pairs[0]) if pairs else 1)]
        if prompt:
            columns[0] = [prompt + text for text in columns[0]]
        if self.info.get("do_lower_case"):
            columns = [[text.lower() for text in column] for column in columns]
        return self.tokenizer(
            *columns, padding=True, truncation="longest_first", max_length=self.max_seq_length, return_tensors="pt"
        )

    def forward(self, features: dict[str, Any], task: str | None = None, **kwargs: Any) -> dict[str, Any]:
        role = {"query": "query", "document": "document"}.get(task or "", "default")
        if role not in self.info["roles"]:
            if self.info.get("route_of"):
                raise ValueError(
                    f"This export holds only the {'/'.join(self.info['roles'])} side of a query encoder for a kept "
                    f"index, not {role!r}: export the model without a role (st-leap export MODEL --backend ...) for "
                    "both graphs, queries and documents"
                )
            raise ValueError(
                f"This export computes the {'/'.join(self.info['roles'])} role(s) at depth {self.info['depth']}, not "
                f"{role!r}; export the model again with role={role!r} for it"
            )
        ids = features["input_ids"]
        types = features.get("token_type_ids")
        types = torch.zeros_like(ids) if types is None else types
        arrays = [_array(ids).astype(np.int64), _array(features["attention_mask"]).astype(np.int64), _array(types).astype(np.int64)]
        features["sentence_embedding"] = torch.from_numpy(self.runner(*arrays))
        return features

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        import shutil

        target = Path(output_path)
        if target.resolve() == self.folder.resolve():
            return
        target.mkdir(parents=True, exist_ok=True)
        for path in self.folder.glob("model.*"):
            shutil.copy2(path, target / path.name)
        self.tokenizer.save_pretrained(str(target))
        _write_json(self.info, target / EXPORT_FILE)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> ExportedEncoder:
        folder = Path(model_name_or_path) / subfolder
        info = read_export_info(folder)
        if info is None:
            raise FileNotFoundError(f"{folder / EXPORT_FILE} is missing: not an st_leap export")
        return cls(folder, **info)
