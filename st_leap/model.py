"""Loading and exit settings: turn a sentence-transformers model into an early-exit one, reload a saved one, and
say which exit settings an ``encode`` call runs with.

:data:`MODEL_DEFAULT` is the one sentinel of st_leap: an exit setting left at it is not passed to ``encode``, so
the model's saved default applies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Router, Transformer

from st_leap.backends import ExportedEncoder, route_modules
from st_leap.exit_maps import ExitMaps
from st_leap.exit_policy import ROLES, ExitStats, role_of
from st_leap.model_card import install_card_data
from st_leap.modules import EarlyExitTransformer


class _ModelDefault:
    """Sentinel type of :data:`MODEL_DEFAULT` (one instance; pickles to itself)."""

    _instance: _ModelDefault | None = None

    def __new__(cls) -> _ModelDefault:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MODEL_DEFAULT"

    def __reduce__(self) -> str:
        return "MODEL_DEFAULT"


MODEL_DEFAULT: Any = _ModelDefault()
"""Value of an exit setting meaning "do not pass it": the model's saved default (or the module's) is used."""

EXIT_KEYS = ("exit_threshold", "exit_patience", "exit_min_layer", "truncate_layers")


def exit_kwargs(
    exit_threshold: float | None | Any = MODEL_DEFAULT,
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
    truncate_layers: int | None | Any = MODEL_DEFAULT,
) -> dict[str, Any]:
    """The exit settings to pass to ``encode``: every setting that is not :data:`MODEL_DEFAULT`.

    ``exit_threshold=None`` is kept (it means full depth); only ``MODEL_DEFAULT`` is dropped.
    """
    given = {
        "exit_threshold": exit_threshold,
        "exit_patience": exit_patience,
        "exit_min_layer": exit_min_layer,
        "truncate_layers": truncate_layers,
    }
    return {key: value for key, value in given.items() if value is not MODEL_DEFAULT}


def early_exit_module(model: SentenceTransformer) -> EarlyExitTransformer | None:
    """The model's first module if it is an :class:`EarlyExitTransformer`, else ``None``."""
    try:
        first = model[0]
    except (IndexError, TypeError, KeyError):
        return None
    return first if isinstance(first, EarlyExitTransformer) else None


def router_of(model: SentenceTransformer) -> Router | None:
    """The model's ``Router`` when its first module is one, else ``None``.

    Such a model is a query encoder for a kept index (:func:`st_leap.fit_query_encoder`): ``encode_query`` runs the
    Router's ``query`` route (a shallow st_leap encoder), ``encode_document`` and plain ``encode`` its ``document``
    route (the index model, unchanged).
    """
    try:
        first = model[0]
    except (IndexError, TypeError, KeyError):
        return None
    return first if isinstance(first, Router) else None


def _encoder_layers(module: Any) -> int | None:
    if isinstance(module, EarlyExitTransformer):
        return int(module.num_layers)
    exported = _exported_graph_info(module)  # an exported graph: its depth
    if exported is not None and isinstance(exported.get("depth"), int):
        return int(exported["depth"])
    try:
        config = module.auto_model.config
    except AttributeError:
        return None
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    return None


def num_layers(model: SentenceTransformer, role: str | None = "default") -> int | None:
    """Number of encoder layers of the model's first module (``None`` when it cannot be told).

    For a ``Router`` model (:func:`router_of`), the layers of the encoder that serves ``role``: ``"query"`` is the
    query route, ``"document"`` and ``"default"`` (plain ``encode``) the index model.
    """
    modules = route_modules(model, role)
    return _encoder_layers(modules[0]) if modules else None


def describe_routes(model: SentenceTransformer) -> dict[str, str] | None:
    """What a ``Router`` model (:func:`router_of`) runs for each role, in words: ``{"query": ..., "document": ...}``
    (``"document"`` also serves plain ``encode``); ``None`` for any other model."""
    if router_of(model) is None:
        return None
    query = route_modules(model, "query")
    first = query[0] if query else None
    if isinstance(first, EarlyExitTransformer):
        settings = first.exit_settings_for("query")
        depth = f"a {first.num_layers}-layer st_leap encoder"
        if settings["exit_threshold"] is not None:
            depth += f" exiting per text at theta {settings['exit_threshold']:g}"
            if settings["truncate_layers"] is not None:
                depth += f" within depth {settings['truncate_layers']}"
        elif settings["truncate_layers"] is not None:
            depth += f" served at depth {settings['truncate_layers']}"
    else:
        layers = _encoder_layers(first)
        depth = f"a {layers}-layer encoder" if layers else f"a {type(first).__name__}"
    if any(type(module).__name__ == "ExitMaps" for module in query):
        depth += ", with its exit map into the index model's space"
    index_layers = num_layers(model, "document")
    index = f"a {index_layers}-layer encoder" if index_layers else "its encoder"
    return {
        "query": f"encode_query runs the query route: {depth}",
        "document": f"encode_document and plain encode run the index model: {index}, unchanged",
    }


def effective_exit_settings(
    model: SentenceTransformer, kwargs: dict[str, Any], task: str | None | Any = MODEL_DEFAULT
) -> dict[str, Any]:
    """The exit settings an ``encode(**kwargs)`` call really runs with: the kwargs, else the module's defaults.

    With ``task`` (``"query"``, ``"document"`` or ``None`` for plain ``encode``) the settings are resolved for
    that role; left out, per-role settings are returned as their mappings (what a report should record).
    """
    module = early_exit_module(model)
    if module is None:
        threshold = kwargs.get("exit_threshold")
        if threshold is not None and not (isinstance(threshold, dict) and not any(threshold.values())):
            raise ValueError(
                "exit_threshold was given but the model's first module is not an st_leap EarlyExitTransformer; "
                "load the model with st_leap.from_pretrained(...)"
            )
        return dict.fromkeys(EXIT_KEYS)
    if task is not MODEL_DEFAULT:
        return module.exit_settings_for(task, **{key: kwargs[key] for key in EXIT_KEYS if key in kwargs})
    return {key: kwargs.get(key, getattr(module, key)) for key in EXIT_KEYS}


def per_role_settings(model: SentenceTransformer, kwargs: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The resolved exit settings of each role (``"query"``, ``"document"``, ``"default"``) for ``encode`` kwargs."""
    tasks = {"query": "query", "document": "document", "default": None}
    return {role: effective_exit_settings(model, kwargs or {}, tasks[role]) for role in ROLES}


def last_call_stats(model: SentenceTransformer, num_samples: int, role: str | None = "default") -> ExitStats:
    """The exit statistics of the model's last ``encode`` call of ``num_samples`` texts (a model without early
    exit ran them all at full depth). For a ``Router`` model (:func:`router_of`) ``role`` says which route the call
    ran: ``"query"`` (``encode_query``), ``"document"`` or ``"default"`` (plain ``encode``)."""
    first = next(iter(route_modules(model, role)), None) if router_of(model) is not None else None
    module = first if isinstance(first, EarlyExitTransformer) else early_exit_module(model)
    if module is not None:
        return ExitStats(module.num_layers, list(module.exit_stats.counts))
    depth = num_layers(model, role) or 0
    stats = ExitStats(depth)
    if depth:
        stats.counts[-1] = num_samples
    return stats


@dataclass
class ExitEncoding:
    """One call's embeddings with where each text stopped: the per-call result of :func:`encode_with_exits`.

    Attributes:
        embeddings: ``(N, D)`` array (or tensor with ``convert_to_tensor=True``), in input order.
        exit_layers: ``(N,)`` int array of 1-based exit layers (``L`` = full depth), in input order.
        stats: The call's :class:`~st_leap.exit_policy.ExitStats`.
        role: ``"query"``, ``"document"`` or ``"default"``.
    """

    embeddings: Any
    exit_layers: np.ndarray
    stats: ExitStats
    role: str


_ENCODE_METHODS = {"query": "encode_query", "document": "encode_document", "default": "encode"}


def encode_with_exits(
    model: SentenceTransformer,
    inputs: Sequence[str] | str,
    *,
    task: str | None = None,
    batch_size: int = 32,
    normalize_embeddings: bool = False,
    convert_to_tensor: bool = False,
    chunk_size: int | None = None,
    **kwargs: Any,
) -> ExitEncoding:
    """Encode and return, for this call only, the embeddings, each text's exit layer and the call's counts.

    Nothing is shared between calls or threads, and it works with a multi-process pool
    (``pool=model.start_multi_process_pool(...)`` or ``device=[...]``): the exit layers come back from the workers
    with the embeddings. It runs ``encode`` / ``encode_query`` / ``encode_document`` (by ``task``) with
    ``output_value=None`` in chunks of ``chunk_size`` texts (default ``8 * batch_size``), keeping only the sentence
    embedding and exit layer of each text, so memory stays bounded. In a pool the token states of a chunk travel
    back from the workers too, which costs transfer time; plain ``model.encode(..., pool=pool)`` does not.

    Args:
        model: An st_leap model (its first module an :class:`~st_leap.EarlyExitTransformer`).
        inputs: Texts (or one text).
        task: ``"query"``, ``"document"`` or ``None`` (plain ``encode``): the role whose exit settings apply.
        batch_size, normalize_embeddings, convert_to_tensor: As for ``encode``.
        chunk_size: Texts per ``encode`` call.
        **kwargs: Every other ``encode`` argument (exit settings, ``prompt``, ``pool``, ``device``...).
    """
    module = early_exit_module(model)
    if module is None:
        raise ValueError("encode_with_exits needs an st_leap model; load it with st_leap.from_pretrained(...)")
    if kwargs.get("output_value", "sentence_embedding") != "sentence_embedding":
        raise ValueError("encode_with_exits returns sentence embeddings; call model.encode for other output values")
    kwargs.pop("output_value", None)
    if kwargs.get("precision", "float32") != "float32":
        raise ValueError("encode_with_exits returns float32 embeddings; quantize them with quantize_embeddings")
    kwargs.pop("precision", None)
    kwargs.pop("convert_to_numpy", None)
    role = role_of(task)
    encode = getattr(model, _ENCODE_METHODS[role])
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    step = chunk_size or 8 * batch_size
    embeddings: list[torch.Tensor] = []
    layers: list[torch.Tensor] = []
    for start in range(0, len(texts), step):
        outputs = encode(texts[start : start + step], batch_size=batch_size, output_value=None, **kwargs)
        embeddings.extend(out["sentence_embedding"].detach().float().cpu() for out in outputs)
        layers.extend(out["exit_layer"].cpu() for out in outputs)
        del outputs  # the chunk's token states
    dim = model.get_embedding_dimension() or 0
    matrix = torch.stack(embeddings) if embeddings else torch.zeros(0, dim)
    if normalize_embeddings:
        matrix = torch.nn.functional.normalize(matrix, p=2, dim=1)
    exit_layers = torch.stack(layers).to(torch.long) if layers else torch.zeros(0, dtype=torch.long)
    return ExitEncoding(
        embeddings=matrix if convert_to_tensor else matrix.numpy(),
        exit_layers=exit_layers.numpy(),
        stats=ExitStats.from_exit_layers(exit_layers, module.num_layers),
        role=role,
    )


def as_early_exit(
    model: SentenceTransformer,
    *,
    exit_threshold: float | None | Any = MODEL_DEFAULT,
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
    truncate_layers: int | None | Any = MODEL_DEFAULT,
) -> SentenceTransformer:
    """Make the first module of ``model`` an :class:`EarlyExitTransformer`, in place, set the given exit defaults
    (validated; the ones left out keep the module's current defaults) and return ``model``.

    The weights and tokenizer are shared, not copied. A plain ``Transformer`` starts from full depth, patience 1
    and l_min half the depth. The defaults are saved with the model, and so is an st_leap model card
    (:class:`~st_leap.model_card.LEAPModelCardData`) instead of the base model's.

    Raises:
        ValueError: if the first module is not a ``Transformer`` of a supported architecture, or a setting is invalid.
    """
    first_name = next(iter(model._modules))
    first = model._modules[first_name]
    if not isinstance(first, EarlyExitTransformer):
        if not isinstance(first, Transformer):
            raise ValueError(f"st_leap needs a model whose first module is a Transformer, got {type(first).__name__}")
        first = EarlyExitTransformer.from_transformer(first)
        model._modules[first_name] = first
    install_card_data(model)
    given = exit_kwargs(exit_threshold, exit_patience, exit_min_layer, truncate_layers)
    first.set_exit_defaults(*(given.get(key, getattr(first, key)) for key in EXIT_KEYS))
    return model


MODULE_TYPE = f"{EarlyExitTransformer.__module__}.{EarlyExitTransformer.__name__}"  # persisted in modules.json
EXIT_MAPS_TYPE = f"{ExitMaps.__module__}.{ExitMaps.__name__}"


def _check_local_folder(model_name_or_path: str) -> Path | None:
    """The local model folder ``model_name_or_path`` names (``None`` for a Hub id), checked before loading: a path
    that does not exist, a partial st_leap folder (``modules.json`` gone, so sentence-transformers would silently
    build another pipeline) or an unreadable ``modules.json`` is an error that names the file."""
    folder = Path(model_name_or_path).expanduser()
    if not folder.exists():
        if str(model_name_or_path).startswith(("/", "./", "../", "~", ".\\")):
            raise FileNotFoundError(f"Model folder {folder} does not exist")
        return None  # a Hub id
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; st_leap loads a model folder (the folder model.save(...) wrote)")
    modules = folder / "modules.json"
    if not modules.exists():
        module_config = folder / "sentence_bert_config.json"
        try:
            saved = json.loads(module_config.read_text(encoding="utf-8")) if module_config.exists() else {}
        except (OSError, json.JSONDecodeError):
            saved = {}
        if any(key in saved for key in EXIT_KEYS):
            raise FileNotFoundError(
                f"{modules} is missing: {folder} holds a saved st_leap model but not its module list, so its "
                "pooling and normalisation cannot be restored. Copy the whole folder again, or re-save the model "
                "with model.save(...)."
            )
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder} has neither modules.json (a sentence-transformers model) nor config.json")
        return folder  # a plain Hugging Face checkpoint: sentence-transformers adds mean pooling
    try:
        json.loads(modules.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{modules} is not valid JSON ({error}); copy the model folder again") from None
    return folder


def _load(model_name_or_path: str, module_classes: dict[str, type] | None = None, **kwargs: Any) -> SentenceTransformer:
    """Load a SentenceTransformer, resolving st_leap's own module type without ``trust_remote_code``.

    A saved st_leap model names ``st_leap.modules.EarlyExitTransformer`` in ``modules.json``. That class is the
    installed st_leap, so it is mapped directly rather than allowing remote code for the whole model (which would
    also let the Hub config run code). Older sentence-transformers without that hook need ``trust_remote_code=True``.
    A saved exit default that is out of range is reported with the file that holds it.
    """
    folder = _check_local_folder(model_name_or_path)
    loader = getattr(SentenceTransformer, "_load_with_module_classes", None)
    try:
        if loader is None:
            kwargs.setdefault("trust_remote_code", True)
            return SentenceTransformer(model_name_or_path, **kwargs)
        classes = {MODULE_TYPE: EarlyExitTransformer, EXIT_MAPS_TYPE: ExitMaps, **(module_classes or {})}
        return loader(model_name_or_path, classes, **kwargs)
    except ValueError as error:
        if folder is None or not str(error).startswith(EXIT_KEYS):
            raise
        raise ValueError(
            f"{folder / 'sentence_bert_config.json'} holds an invalid exit default: {error}. Fix the value in that "
            "file (null for exit_threshold and truncate_layers means the whole encoder)."
        ) from None


def from_pretrained(
    model_name_or_path: str,
    *,
    exit_threshold: float | None | Any = MODEL_DEFAULT,
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
    truncate_layers: int | None | Any = MODEL_DEFAULT,
    backend: str | None = None,
    quantize: str | None = None,
    base_model: str | None = None,
    **kwargs: Any,
) -> SentenceTransformer:
    """Load any sentence-transformers model (Hub id or local folder) with early exit, or a folder written by
    :func:`st_leap.backends.export`.

    Args:
        model_name_or_path: Hub id (needs internet) or local folder, e.g. ``st_leap.resources.minilm_path()``.
        exit_threshold: Default theta for ``encode``; ``None`` = full depth. Left out: the saved default (st_leap
            models) or ``None``. Every setting takes one value or a mapping from role to value, keys ``"query"``
            (``encode_query``), ``"document"`` (``encode_document``) and ``"default"`` (plain ``encode``), e.g.
            ``{"query": 0.95, "document": None, "default": None}``; the mapping is saved with the model.
        exit_patience: Default k. Left out: the saved default or 1.
        exit_min_layer: Default l_min. Left out: the saved default or half the depth.
        truncate_layers: Default static depth (every sample runs exactly that many layers). Left out: the saved
            default or ``None`` (the whole encoder).
        backend: ``"torch"`` (default), or ``"onnx"`` (ONNX Runtime) / ``"openvino"``: the encoder exported as
            segments, one per layer, with the exit loop between them (:mod:`st_leap.backends`); exported on first
            use and cached beside the model. BERT family, MPNet and DistilBERT. Left out for an exported folder: the
            backend it was exported for.
        quantize: ``"int8"`` with ``backend="onnx"`` / ``"openvino"``.
        base_model: The Hub id a local folder is a copy of, named by the model card of a converted model (a Hub
            id names itself).
        **kwargs: Passed to ``SentenceTransformer`` (``device``, ``model_kwargs``, ``local_files_only``...).

    Returns:
        A ``SentenceTransformer`` whose first module is an :class:`EarlyExitTransformer`; for a static-depth
        export, one whose only module is :class:`st_leap.backends.ExportedEncoder` (the graph runs the whole
        pipeline, exit settings do not apply).
    """
    from st_leap import backends

    backends.check_backend(backend or "torch", quantize)  # before any model loads
    folder = Path(model_name_or_path).expanduser()
    info = backends.read_export_info(folder) if folder.is_dir() else None
    export_dir = None
    if info is not None and info.get("kind") in ("static", "routes"):
        given = exit_kwargs(exit_threshold, exit_patience, exit_min_layer, truncate_layers)
        if given or (backend or info["backend"]) != info["backend"] or (quantize or info["quantize"]) != info["quantize"]:
            what = f"at depth {info['depth']}" if info["kind"] == "static" else "with one graph per route"
            raise ValueError(
                f"{folder} is a {info['backend']} export {what}: it runs that setting only "
                "(export the source model again for other exit settings or backends)"
            )
        if info["kind"] == "routes":
            return _load_routes(folder, info, **kwargs)
        encoder = backends.ExportedEncoder
        return _load(str(folder), {f"{encoder.__module__}.{encoder.__name__}": encoder}, **kwargs)
    if info is not None and info.get("kind") == "segments" and backend is None:
        backend, quantize, export_dir = info["backend"], info["quantize"], str(folder / info["segments"])
    backend = backend or "torch"
    model = _load(model_name_or_path, **kwargs)
    if router_of(model) is not None:
        # A query encoder for a kept index (st_leap.fit_query_encoder): each route keeps the settings it was saved
        # with; encode_query runs the shallow query side, encode_document the index model.
        if exit_kwargs(exit_threshold, exit_patience, exit_min_layer, truncate_layers) or backend != "torch":
            raise ValueError(
                f"{model_name_or_path} routes queries and documents to two encoders; exit settings and backends "
                "apply to one of them: pass them to encode_query(...) / encode_document(...), or export the query "
                "side with st-leap export"
            )
        return model
    converted = early_exit_module(model) is None
    as_early_exit(
        model,
        exit_threshold=exit_threshold,
        exit_patience=exit_patience,
        exit_min_layer=exit_min_layer,
        truncate_layers=truncate_layers,
    )
    card = model.model_card_data
    if converted and not card.base_model:  # the card names the model this one was converted from
        card.base_model = base_model or (None if Path(model_name_or_path).exists() else model_name_or_path)
    if backend != "torch":
        model[0].use_backend(backend, quantize, export_dir=export_dir, model_path=model_name_or_path)
    return model


def _load_routes(folder: Path, info: dict[str, Any], **kwargs: Any) -> SentenceTransformer:
    """An export of a query encoder for a kept index (:func:`st_leap.backends.export` of a ``Router`` model): a
    ``Router`` over the exported graphs, queries to ``query/``, documents and plain ``encode`` to ``document/``."""
    from sentence_transformers.base.modules import Router

    from st_leap.backends import read_export_info

    routes = {}
    for side, route in info["routes"].items():
        sub = folder / route["folder"]
        sub_info = read_export_info(sub)
        if sub_info is None:
            raise FileNotFoundError(f"{sub} holds no st_leap_export.json: copy the whole exported folder again")
        routes[side] = ExportedEncoder(sub, **sub_info)
    router = Router.for_query_document([routes["query"]], [routes["document"]], default_route=info["default_route"])
    return SentenceTransformer(modules=[router], device=kwargs.get("device") or "cpu")


def require_torch_encoder(model: SentenceTransformer, command: str) -> None:
    """Refuse an exported graph, or a query encoder exported as one graph per route, for ``command`` (what needs
    the encoder's layers: diagnose, calibrate, monitor), saying what to pass instead."""
    for role in ("query", "document"):
        info = _exported_graph_info(next(iter(route_modules(model, role)), None))
        if info is not None:
            raise ValueError(
                f"{command} needs the encoder's layers, and this is an exported {info['backend']} graph of depth "
                f"{info['depth']}: pass the model it was exported from"
            )


def _export_info(model: SentenceTransformer) -> dict[str, Any] | None:
    """The ``st_leap_export.json`` of a single exported graph (:class:`st_leap.backends.ExportedEncoder` as the
    first module), else ``None``."""
    return _exported_graph_info(model[0] if len(model) else None)


def _exported_graph_info(module: Any) -> dict[str, Any] | None:
    """The export metadata of an :class:`st_leap.backends.ExportedEncoder`, else ``None``."""
    return module.info if isinstance(module, ExportedEncoder) else None


def load(path: str, **kwargs: Any) -> SentenceTransformer:
    """Reload a model saved with ``model.save(path)``, with the exit defaults it was saved with."""
    return from_pretrained(path, **kwargs)


def load_model(
    model: str | SentenceTransformer, *, allow_router: bool = False, **kwargs: Any
) -> SentenceTransformer:
    """An st_leap early-exit model from a path, Hub id or already loaded ``SentenceTransformer``.

    A model that already is an st_leap model is returned as is; a plain one is converted in place (its saved exit
    defaults, if any, are kept).

    Args:
        model: Path, Hub id or ``SentenceTransformer``.
        allow_router: Return a query encoder for a kept index (a ``Router`` model, :func:`router_of`) as it is.
            Left ``False``, such a model is refused with a message that names its query side, for callers that
            need one early-exit encoder.
        **kwargs: Passed to :func:`from_pretrained` for a path or Hub id.

    Raises:
        ValueError: for a ``Router`` model without ``allow_router``.
    """
    if isinstance(model, SentenceTransformer):
        ready = early_exit_module(model) is not None or router_of(model) is not None or _export_info(model)
        loaded = model if ready else as_early_exit(model)
    else:
        loaded = from_pretrained(str(model), **kwargs)
    exported = _export_info(loaded)
    if exported:
        what = f"an exported {exported['backend']} graph of depth {exported['depth']} (roles {', '.join(exported['roles'])})"
        if exported.get("route_of"):
            raise ValueError(
                f"this is {what}: the {'/'.join(exported['roles'])} side of a query encoder for a kept index only. "
                "Export the query encoder without a role (one graph per route, queries and documents), or pass the "
                "query encoder itself"
            )
        raise ValueError(
            f"this is {what}: it runs that one setting, and this command needs the model it was exported from "
            "(pass that folder), or encode with st_leap.load(folder) directly"
        )
    if router_of(loaded) is not None and not allow_router:
        raise ValueError(
            "this is a query encoder for a kept index: a Router that sends encode_query to a shallow encoder and "
            "encode_document to the index model. This needs one early-exit encoder: pass its query side, "
            "st_leap.backends.query_side(model), or the index model"
        )
    return loaded


def model_name(
    model: SentenceTransformer, fallback: str | None = None, names: Mapping[str, str] | None = None
) -> str:
    """A readable name: ``names[fallback]`` (a mapping from resolved local folder to Hub id, e.g.
    ``st_leap.resources.known_local_models()``, given by the caller), else the model card name, else the folder
    name of ``fallback``, else ``"unnamed"``.

    The card's base model names a query encoder for a kept index (a ``Router`` model) only as
    ``"query encoder for <base model>"``, after the folder name: it is the index model's name, not this model's.
    """
    if fallback and names:
        resolved = str(Path(str(fallback)).resolve()) if Path(str(fallback)).exists() else str(fallback)
        if resolved in names:
            return names[resolved]
    card = getattr(model, "model_card_data", None)
    base = getattr(card, "base_model", None)
    router = router_of(model) is not None
    name = getattr(card, "model_name", None) or (None if router else base)
    if name:
        return str(name)
    if fallback:
        path = Path(str(fallback))
        if path.exists():
            return path.name if path.name != "model" else path.parent.name
        return str(fallback)
    return f"query encoder for {base}" if router and base else "unnamed"
