"""Loading: turn a sentence-transformers model into an early-exit one, and reload a saved one."""

from __future__ import annotations

from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer

from st_leap.exit_policy import validate_exit_args
from st_leap.modules import EarlyExitTransformer

_UNSET: Any = object()


def as_early_exit(
    model: SentenceTransformer,
    *,
    exit_threshold: float | None = _UNSET,
    exit_patience: int = _UNSET,
    exit_min_layer: int | None = _UNSET,
) -> SentenceTransformer:
    """Make the first module of ``model`` an :class:`EarlyExitTransformer`, in place, and return ``model``.

    The weights and tokenizer are shared, not copied. Settings left out keep the module's current defaults (for a
    plain ``Transformer``: full depth, patience 1, l_min half the depth).

    Raises:
        ValueError: if the first module is not a ``Transformer`` of a supported architecture, or a setting is invalid.
    """
    first_name = next(iter(model._modules))
    first = model._modules[first_name]
    if not isinstance(first, EarlyExitTransformer):
        if not isinstance(first, Transformer):
            raise ValueError(
                f"st_leap needs a model whose first module is a Transformer, got {type(first).__name__}"
            )
        first = EarlyExitTransformer.from_transformer(first)
        model._modules[first_name] = first
    given = {"exit_threshold": exit_threshold, "exit_patience": exit_patience, "exit_min_layer": exit_min_layer}
    settings = {key: getattr(first, key) if value is _UNSET else value for key, value in given.items()}
    first.exit_threshold, first.exit_patience, first.exit_min_layer = validate_exit_args(
        settings["exit_threshold"], settings["exit_patience"], settings["exit_min_layer"], first.num_layers
    )
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
    exit_threshold: float | None = _UNSET,
    exit_patience: int = _UNSET,
    exit_min_layer: int | None = _UNSET,
    **kwargs: Any,
) -> SentenceTransformer:
    """Load any sentence-transformers model (Hub id or local folder) with early exit.

    Args:
        model_name_or_path: Hub id (needs internet) or local folder, e.g. ``st_leap.resources.minilm_path()``.
        exit_threshold: Default theta for ``encode``; ``None`` = full depth. Left out: the saved default (st_leap
            models) or ``None``.
        exit_patience: Default k. Left out: the saved default or 1.
        exit_min_layer: Default l_min. Left out: the saved default or half the depth.
        **kwargs: Passed to ``SentenceTransformer`` (``device``, ``model_kwargs``, ``local_files_only``...).

    Returns:
        A ``SentenceTransformer`` whose first module is an :class:`EarlyExitTransformer`.
    """
    model = _load(model_name_or_path, **kwargs)
    return as_early_exit(
        model, exit_threshold=exit_threshold, exit_patience=exit_patience, exit_min_layer=exit_min_layer
    )


def load(path: str, **kwargs: Any) -> SentenceTransformer:
    """Reload a model saved with ``model.save(path)``, with the exit defaults it was saved with."""
    return from_pretrained(path, **kwargs)
