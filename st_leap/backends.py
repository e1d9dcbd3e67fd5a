"""Early exit on ONNX Runtime and OpenVINO: the encoder exported as segments, the exit loop in Python between them.

No exporter supports a data-dependent exit loop, so the encoder is exported piece by piece with the ecosystem's
own tools: the embeddings, then each layer on its own (``torch.onnx.export``; OpenVINO converts the ONNX files
with ``openvino.convert_model``). The layer loop of :class:`~st_leap.EarlyExitTransformer` then calls one
segment per layer and keeps doing everything else itself: the exit rule of :mod:`st_leap.exit_policy`, batch
compaction and padding trim. Pooling and the rest of the sentence-transformers pipeline run as usual on the exit
layer's hidden states.

INT8: ``quantize="int8"`` applies ONNX Runtime's dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``,
int8 weights, activations quantised on the fly) to the ONNX segments, and NNCF's int8 weight compression
(``nncf.compress_weights``) to the OpenVINO ones.

Exports are cached in the model folder, ``<model>/st_leap_export/<backend>[-int8]/``, or under the st_leap cache
(``$ST_LEAP_CACHE``, else ``~/.cache/st_leap``) for a Hub model, and reused while ``export.json`` matches the model.
Supported: the BERT family (BERT, MiniLM, RoBERTa, XLM-R, CamemBERT). Loading is one call,
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
from torch import Tensor, nn

BACKENDS = ("torch", "onnx", "openvino")
QUANTIZATIONS = (None, "int8")
SEGMENT_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
EXPORT_VERSION = 1  # bump when the segment graphs change: older exports are then rebuilt


def check_backend(backend: str, quantize: str | None) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if backend == "torch" and quantize is not None:
        raise ValueError("quantize applies to backend='onnx' or 'openvino'; for torch use torch.ao.quantization")


class _EmbeddingSegment(nn.Module):
    def __init__(self, embeddings: nn.Module) -> None:
        super().__init__()
        self.embeddings = embeddings

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)


class _LayerSegment(nn.Module):
    """One encoder layer taking the ``(B, T)`` attention mask; the additive mask is built inside the graph."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        out = self.layer(hidden, additive)
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


def convert_onnx(onnx_file: str | Path, target: str | Path, backend: str, quantize: str | None = None) -> Path:
    """An fp32 ONNX graph made ready for ``backend``: ONNX Runtime's dynamic int8 quantisation
    (``quantize_dynamic``) for ``"onnx"`` + ``"int8"``; OpenVINO's ``convert_model`` (with NNCF's int8 weight
    compression for ``"int8"``) for ``"openvino"``. Returns ``target``."""
    check_backend(backend, quantize)
    if backend == "onnx" and quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(onnx_file), str(target), weight_type=QuantType.QInt8)
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
    layers = module._backbone.__class__(hf).layers
    ids = torch.ones(2, 7, dtype=torch.long)
    hidden = torch.randn(2, 7, hf.config.hidden_size)
    mask = torch.ones(2, 7, dtype=torch.long)
    seq = {0: "batch", 1: "sequence"}
    onnx_dir = folder if backend == "onnx" and quantize is None else folder / "fp32"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    files = ["embeddings", *(f"layer_{i:02d}" for i in range(len(layers)))]
    with torch.no_grad():
        _export_onnx(
            _EmbeddingSegment(hf.embeddings),
            (ids, torch.zeros_like(ids)),
            ["input_ids", "token_type_ids"],
            onnx_dir / "embeddings.onnx",
            {"input_ids": seq, "token_type_ids": seq, "hidden": {0: "batch", 1: "sequence"}},
        )
        for i, layer in enumerate(layers):
            _export_onnx(
                _LayerSegment(layer),
                (hidden, mask),
                ["hidden_in", "attention_mask"],
                onnx_dir / f"layer_{i:02d}.onnx",
                {"hidden_in": seq, "attention_mask": seq, "hidden": seq},
            )
    if backend != "onnx" or quantize is not None:
        for name in files:
            suffix = ".onnx" if backend == "onnx" else ".xml"
            convert_onnx(onnx_dir / f"{name}.onnx", folder / f"{name}{suffix}", backend, quantize)
    from st_leap.reporting import write_json

    write_json(meta, meta_path)  # last: a folder without it is rebuilt
    return folder


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
