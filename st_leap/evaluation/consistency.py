from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from st_leap.exit_policy import ExitStats
from st_leap.model import MODEL_DEFAULT, effective_exit_settings, exit_kwargs, load_model, model_name, num_layers
from st_leap.reporting import run_info

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

FAILURE_THRESHOLDS = (0.5, 0.3)


def encode_with_exit_layers(
    model: SentenceTransformer,
    sentences: Sequence[str],
    *,
    batch_size: int = 32,
    chunk_size: int = 1024,
    show_progress_bar: bool = True,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Embeddings, 1-based exit layers and encode seconds of ``sentences`` under the given exit settings.

    Encodes with ``output_value=None`` in chunks of ``chunk_size`` texts (so token embeddings never pile up) and
    keeps only ``sentence_embedding`` and ``exit_layer``. A model without early exit reports full depth.
    """
    depth = num_layers(model) or 0
    embeddings: list[np.ndarray] = []
    layers: list[int] = []
    seconds = 0.0
    chunks = range(0, len(sentences), chunk_size)
    for start in tqdm(chunks, desc="Encoding chunks", disable=not show_progress_bar or len(chunks) < 2):
        chunk = list(sentences[start : start + chunk_size])
        t0 = time.perf_counter()
        outputs = model.encode(chunk, batch_size=batch_size, output_value=None, show_progress_bar=False, **kwargs)
        seconds += time.perf_counter() - t0
        for out in outputs:
            embeddings.append(out["sentence_embedding"].detach().float().cpu().numpy())
            layer = out.get("exit_layer")
            layers.append(int(layer) if layer is not None else depth)
    dim = (
        model.get_embedding_dimension()
        if hasattr(model, "get_embedding_dimension")
        else model.get_sentence_embedding_dimension()
    ) or 0
    matrix = np.stack(embeddings) if embeddings else np.zeros((0, dim), dtype=np.float32)
    return matrix, np.asarray(layers, dtype=np.int64), seconds


def nearest_neighbors(embeddings: np.ndarray, k: int = 10, block_size: int = 2048) -> np.ndarray:
    """Indices of the ``k`` nearest neighbours (cosine) of every row among the other rows, nearest first.

    Ties are broken by the lower index, so the result is deterministic.
    """
    n = embeddings.shape[0]
    if k >= n:
        raise ValueError(f"k must be smaller than the number of embeddings ({n}), got {k}")
    normed = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
    result = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_size):
        sims = normed[start : start + block_size] @ normed.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        # Stable sort of -sim keeps the lower index first among equal similarities.
        result[start : start + sims.shape[0]] = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return result


def nn_overlap(full_embeddings: np.ndarray, exit_embeddings: np.ndarray, k: int = 10) -> np.ndarray:
    """NN@k consistency of every item: the share of its k full-depth neighbours it keeps with early exit.

    Both neighbour sets are taken within the same collection, embedded once at full depth and once with early exit
    (the index a user would build), so 1.0 means early exit did not change the item's top-k.
    """
    if full_embeddings.shape != exit_embeddings.shape:
        raise ValueError(f"shape mismatch: {full_embeddings.shape} vs {exit_embeddings.shape}")
    full_nn = nearest_neighbors(full_embeddings, k)
    exit_nn = nearest_neighbors(exit_embeddings, k)
    return np.asarray([len(set(a) & set(b)) / k for a, b in zip(full_nn.tolist(), exit_nn.tolist(), strict=True)])


def nn_consistency(
    full_embeddings: np.ndarray,
    exit_embeddings: np.ndarray,
    exit_layers: Sequence[int] | np.ndarray | None = None,
    *,
    k: int = 10,
    failure_thresholds: Sequence[float] = FAILURE_THRESHOLDS,
    num_layers: int | None = None,
) -> dict[str, Any]:
    """NN@k consistency of early-exit vs full-depth embeddings, overall and per exit layer (paper Tables 4, 13).

    Returns:
        ``{"k", "mean", "failure_rates": {"<0.5": share of items with NN@k < 0.5, "<0.3": ...}, "per_layer": [...]}``;
        each per-layer row has the layer, the number and share of items that exited there, their mean NN@k and
        their failure rates. Layers where nothing exited are listed with ``n = 0`` and ``None`` metrics.
    """
    overlap = nn_overlap(full_embeddings, exit_embeddings, k)

    def summary(values: np.ndarray) -> dict[str, Any]:
        if values.size == 0:
            return {"mean": None, "failure_rates": {f"<{t:g}": None for t in failure_thresholds}}
        return {
            "mean": float(values.mean()),
            "failure_rates": {f"<{t:g}": float((values < t).mean()) for t in failure_thresholds},
        }

    result: dict[str, Any] = {"k": k, "num_samples": int(overlap.size), **summary(overlap)}
    if exit_layers is not None:
        layers = np.asarray(exit_layers, dtype=np.int64)
        depth = num_layers or (int(layers.max()) if layers.size else 0)
        result["per_layer"] = [
            {"layer": layer, "n": int((layers == layer).sum()), "share": float((layers == layer).mean())}
            | summary(overlap[layers == layer])
            for layer in range(1, depth + 1)
        ]
        result["distribution"] = ExitStats.from_exit_layers(layers, depth).to_dict()
    return result


def evaluate_consistency(
    model: SentenceTransformer | str,
    sentences: Sequence[str],
    *,
    exit_threshold: float | None | Any = MODEL_DEFAULT,
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
    k: int = 10,
    batch_size: int = 32,
    show_progress_bar: bool = True,
    full_embeddings: np.ndarray | None = None,
) -> dict[str, Any]:
    """Encode ``sentences`` at full depth and with early exit and report NN@k consistency and the exit distribution.

    Pass ``full_embeddings`` (same order as ``sentences``) to reuse a full-depth encoding across settings.
    """
    st_model = load_model(model)
    kwargs = exit_kwargs(exit_threshold, exit_patience, exit_min_layer)
    if full_embeddings is None:
        full_embeddings, _, _ = encode_with_exit_layers(
            st_model, sentences, batch_size=batch_size, show_progress_bar=show_progress_bar, exit_threshold=None
        )
    exit_emb, layers, seconds = encode_with_exit_layers(
        st_model, sentences, batch_size=batch_size, show_progress_bar=show_progress_bar, **kwargs
    )
    return {
        "measured": f"NN@{k} consistency of early-exit vs full-depth embeddings over {len(sentences)} texts",
        "model": model_name(st_model, model if isinstance(model, str) else None),
        "exit_settings": effective_exit_settings(st_model, kwargs),
        "encode_seconds": seconds,
        **nn_consistency(full_embeddings, exit_emb, layers, k=k, num_layers=num_layers(st_model)),
        "run_info": run_info(batch_size=batch_size),
    }
