"""Loading and exit settings: turn a sentence-transformers model into an early-exit one, reload a saved one, and
say which exit settings an ``encode`` call runs with.

:data:`MODEL_DEFAULT` is the one sentinel of st_leap: an exit setting left at it is not passed to ``encode``, so
the model's saved default applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer

from st_leap.exit_policy import ExitStats, validate_exit_args, validate_truncate_layers
from st_leap.modules import EarlyExitTransformer
from st_leap.resources import known_local_models


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


def num_layers(model: SentenceTransformer) -> int | None:
    """Number of encoder layers of the model's first module (``None`` when it cannot be told)."""
    module = early_exit_module(model)
    if module is not None:
        return int(module.num_layers)
    try:
        config = model[0].auto_model.config
    except (AttributeError, IndexError, TypeError, KeyError):
        return None
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    return None


def effective_exit_settings(model: SentenceTransformer, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The exit settings an ``encode(**kwargs)`` call really runs with: the kwargs, else the module's defaults."""
    module = early_exit_module(model)
    if module is None:
        if kwargs.get("exit_threshold") is not None:
            raise ValueError(
                "exit_threshold was given but the model's first module is not an st_leap EarlyExitTransformer; "
                "load the model with st_leap.from_pretrained(...)"
            )
        return dict.fromkeys(EXIT_KEYS)
    return {key: kwargs.get(key, getattr(module, key)) for key in EXIT_KEYS}


def last_call_stats(model: SentenceTransformer, num_samples: int) -> ExitStats:
    """The exit statistics of the model's last ``encode`` call of ``num_samples`` texts (a model without early
    exit ran them all at full depth)."""
    module = early_exit_module(model)
    if module is not None:
        return ExitStats(module.num_layers, list(module.exit_stats.counts))
    depth = num_layers(model) or 0
    stats = ExitStats(depth)
    if depth:
        stats.counts[-1] = num_samples
    return stats


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
    and l_min half the depth. The defaults are saved with the model.

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
    given = exit_kwargs(exit_threshold, exit_patience, exit_min_layer, truncate_layers)
    settings = {key: given.get(key, getattr(first, key)) for key in EXIT_KEYS}
    first.exit_threshold, first.exit_patience, first.exit_min_layer = validate_exit_args(
        settings["exit_threshold"], settings["exit_patience"], settings["exit_min_layer"], first.num_layers
    )
    first.truncate_layers = validate_truncate_layers(settings["truncate_layers"], first.num_layers)
    return model


MODULE_TYPE = f"{EarlyExitTransformer.__module__}.{EarlyExitTransformer.__name__}"  # persisted in modules.json


def _load(model_name_or_path: str, **kwargs: Any) -> SentenceTransformer:
    """Load a SentenceTransformer, resolving st_leap's own module type without ``trust_remote_code``.

    A saved st_leap model names ``st_leap.modules.EarlyExitTransformer`` in ``modules.json``. That class is the
    installed st_leap, so it is mapped directly rather than allowing remote code for the whole model (which would
    also let the Hub config run code). Older sentence-transformers without that hook need ``trust_remote_code=True``.
    """
    loader = getattr(SentenceTransformer, "_load_with_module_classes", None)
    if loader is None:
        kwargs.setdefault("trust_remote_code", True)
        return SentenceTransformer(model_name_or_path, **kwargs)
    return loader(model_name_or_path, {MODULE_TYPE: EarlyExitTransformer}, **kwargs)


def from_pretrained(
    model_name_or_path: str,
    *,
    exit_threshold: float | None | Any = MODEL_DEFAULT,
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
    truncate_layers: int | None | Any = MODEL_DEFAULT,
    **kwargs: Any,
) -> SentenceTransformer:
    """Load any sentence-transformers model (Hub id or local folder) with early exit.

    Args:
        model_name_or_path: Hub id (needs internet) or local folder, e.g. ``st_leap.resources.minilm_path()``.
        exit_threshold: Default theta for ``encode``; ``None`` = full depth. Left out: the saved default (st_leap
            models) or ``None``.
        exit_patience: Default k. Left out: the saved default or 1.
        exit_min_layer: Default l_min. Left out: the saved default or half the depth.
        truncate_layers: Default static depth (every sample runs exactly that many layers). Left out: the saved
            default or ``None`` (the whole encoder).
        **kwargs: Passed to ``SentenceTransformer`` (``device``, ``model_kwargs``, ``local_files_only``...).

    Returns:
        A ``SentenceTransformer`` whose first module is an :class:`EarlyExitTransformer`.
    """
    model = _load(model_name_or_path, **kwargs)
    return as_early_exit(
        model,
        exit_threshold=exit_threshold,
        exit_patience=exit_patience,
        exit_min_layer=exit_min_layer,
        truncate_layers=truncate_layers,
    )


def load(path: str, **kwargs: Any) -> SentenceTransformer:
    """Reload a model saved with ``model.save(path)``, with the exit defaults it was saved with."""
    return from_pretrained(path, **kwargs)


def load_model(model: str | SentenceTransformer, **kwargs: Any) -> SentenceTransformer:
    """An st_leap early-exit model from a path, Hub id or already loaded ``SentenceTransformer``.

    A model that already is an st_leap model is returned as is; a plain one is converted in place (its saved exit
    defaults, if any, are kept).
    """
    if isinstance(model, SentenceTransformer):
        return model if early_exit_module(model) is not None else as_early_exit(model)
    return from_pretrained(str(model), **kwargs)


def model_name(model: SentenceTransformer, fallback: str | None = None) -> str:
    """A readable name: the Hub id of a packaged local copy, else the model card name, else the folder name of
    ``fallback``, else ``"unnamed"``."""
    if fallback:
        resolved = str(Path(str(fallback)).resolve()) if Path(str(fallback)).exists() else None
        known = known_local_models()
        if resolved in known:
            return known[resolved]
    card = getattr(model, "model_card_data", None)
    name = getattr(card, "model_name", None) or getattr(card, "base_model", None)
    if name:
        return str(name)
    if fallback:
        path = Path(str(fallback))
        if path.exists():
            return path.name if path.name != "model" else path.parent.name
        return str(fallback)
    return "unnamed"
