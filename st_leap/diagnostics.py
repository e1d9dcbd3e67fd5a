"""Is a model exit-compatible? The diagnostics of paper section 5.2, measured on your sentences.

:func:`diagnose` runs the model once at full depth with every hidden state, and derives from the mean-pooled
states ``p_l``: the cosine of each layer to the final layer, the k-skip adjacent cosine that the exit rule reads,
the contraction ratio ``gamma_l = ||p_{l+1} - p_l|| / ||p_l - p_{l-1}||``, and the exit rate and E[layers] that
the exit rule gives at each threshold. It also times the monitoring overhead and gives a verdict.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from st_leap.exit_maps import hidden_state_batches
from st_leap.exit_policy import (
    PAPER_THRESHOLDS,
    ExitStats,
    default_min_layer,
    exit_layers_from_pooled,
    mean_pool,
    validate_exit_args,
)
from st_leap.model import require_torch_encoder, router_of
from st_leap.modules import EarlyExitTransformer

# Verdict rules (documented in docs/diagnostics.md).
MIN_EXIT_RATE = 0.25  # at theta = 0.95: below this, early exit buys (almost) nothing
MIN_EXITED_SIMILARITY = 0.90  # exited samples' pooled state must be this close to the final one
VERDICT_THRESHOLD = 0.95


@torch.inference_mode()
def layer_pooled_states(
    model: SentenceTransformer, sentences: Sequence[str], batch_size: int = 32, show_progress_bar: bool = True
) -> torch.Tensor:
    """Mean-pooled hidden states of every layer, ``(N, L + 1, H)`` on CPU (index 0 = embedding output)."""
    was_training = model.training
    model.eval()
    pooled = [None] * len(sentences)
    try:
        for idx, features, hidden_states in hidden_state_batches(
            model, list(sentences), batch_size, show_progress_bar, "Layer states"
        ):
            states = torch.stack([mean_pool(h, features["attention_mask"]) for h in hidden_states], dim=1).cpu()
            for row, i in enumerate(idx):
                pooled[i] = states[row]
    finally:
        model.train(was_training)
    return torch.stack(pooled) if pooled else torch.empty(0)


def _mean_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()


def layer_similarities(pooled: torch.Tensor, patience: int = 1) -> dict[str, list[float]]:
    """Mean cosine of each layer's pooled state to the final layer's (``to_final``) and to the state ``patience``
    layers before (``adjacent``, the quantity the exit rule reads), for layers ``l = 1..L`` of ``(N, L + 1, H)``
    pooled states (index 0 = embedding output, so ``adjacent[l - 1]`` exists for ``l >= patience``)."""
    num_layers = pooled.shape[1] - 1
    final = pooled[:, num_layers]
    return {
        "to_final": [_mean_cos(pooled[:, layer], final) for layer in range(1, num_layers + 1)],
        "adjacent": [
            _mean_cos(pooled[:, layer], pooled[:, layer - patience]) if layer >= patience else None
            for layer in range(1, num_layers + 1)
        ],
    }


def layer_similarity(model: SentenceTransformer, sentences: Sequence[str], batch_size: int = 64) -> dict[str, list]:
    """:func:`layer_similarities` (patience 1) of ``model`` on ``sentences``, from one full-depth pass."""
    return layer_similarities(layer_pooled_states(model, list(sentences), batch_size=batch_size, show_progress_bar=False))


def _early_exit_view(model: SentenceTransformer) -> tuple[SentenceTransformer, EarlyExitTransformer]:
    """The model with an EarlyExitTransformer first, sharing weights, without changing ``model`` itself."""
    first = model[0]
    if isinstance(first, EarlyExitTransformer):
        return model, first
    early = EarlyExitTransformer.from_transformer(first)
    return SentenceTransformer(modules=[early, *list(model)[1:]], device=str(model.device)), early


def _timed_encode(model: SentenceTransformer, sentences: list[str], kwargs: dict[str, Any]) -> float:
    """Seconds for one encode call: CUDA events on a GPU (after a synchronize), perf_counter elsewhere."""
    if model.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        model.encode(sentences, **kwargs)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0
    start_time = time.perf_counter()
    model.encode(sentences, **kwargs)
    return time.perf_counter() - start_time


def time_encode(
    model: SentenceTransformer,
    sentences: Sequence[str],
    settings: dict[str, dict[str, Any]],
    batch_size: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    models: dict[str, SentenceTransformer] | None = None,
    show_progress_bar: bool = True,
) -> dict[str, dict[str, Any]]:
    """Wall-clock time of ``encode(sentences, **kwargs)`` for each named setting, interleaved.

    Every setting is warmed up, then the settings run round-robin ``repeats`` times, in an order rotated every
    round, so that noise on a shared machine and position effects hit all of them alike. For each setting: the
    median seconds; the median of its per-round time ratio to the first setting (the reference,
    ``ratio_to_reference``); its per-round speed-up over the reference (reference time / its time, same round) as a
    median (``speedup``) with the 25th-75th percentile band (``speedup_band``), the noise band the benchmarks
    report; and the exit statistics of its last run (when its first module exits early).
    ``models`` maps a setting name to another model to time for it (e.g. the stock or a truncated model).
    """
    sentences = list(sentences)
    models = models or {}
    common = {"batch_size": batch_size, "show_progress_bar": False}
    progress = tqdm(
        total=len(settings) * (warmup + repeats), desc="Timing encode (interleaved)", disable=not show_progress_bar
    )
    for name, setting in settings.items():
        for _ in range(warmup):
            models.get(name, model).encode(sentences, **setting, **common)
            progress.update()
    times: dict[str, list[float]] = {name: [] for name in settings}
    stats: dict[str, dict[str, Any] | None] = {}
    names = list(settings)
    for round_index in range(repeats):
        shift = round_index % len(names)  # rotate the order so no setting always runs first after the others
        for name in names[shift:] + names[:shift]:
            setting = settings[name]
            timed_model = models.get(name, model)
            times[name].append(_timed_encode(timed_model, sentences, {**setting, **common}))
            first = timed_model[0]
            stats[name] = first.exit_stats.to_dict() if isinstance(first, EarlyExitTransformer) else None
            progress.update()
    progress.close()
    reference = next(iter(settings))
    out = {}
    for name in settings:
        ratios = [t / r for t, r in zip(times[name], times[reference])]
        speedups = [1.0 / ratio for ratio in ratios]
        out[name] = {
            "kwargs": settings[name],
            "seconds_median": statistics.median(times[name]),
            "seconds": times[name],
            "ratio_to_reference": statistics.median(ratios),
            "speedup": statistics.median(speedups),
            "speedup_band": [float(np.percentile(speedups, 25)), float(np.percentile(speedups, 75))],
            "exit_stats": stats[name],
        }
    return out


def measure_monitoring_overhead(
    model: SentenceTransformer, sentences: Sequence[str], batch_size: int = 32, repeats: int = 5
) -> dict[str, Any]:
    """Time ``encode`` at full depth against the exit check running from layer 2 with a threshold that never fires.

    The overhead is the median of the per-round time ratios of :func:`time_encode`, minus one.
    """
    view, _ = _early_exit_view(model)
    monitor = {"exit_threshold": 1.0, "exit_min_layer": 2, "exit_patience": 1}
    timed = time_encode(
        view, sentences, {"full_depth": {"exit_threshold": None}, "monitored": monitor}, batch_size, repeats
    )
    stats = timed["monitored"]["exit_stats"]
    return {
        "overhead": timed["monitored"]["ratio_to_reference"] - 1.0,
        "full_depth_seconds_median": timed["full_depth"]["seconds_median"],
        "monitored_seconds_median": timed["monitored"]["seconds_median"],
        "repeats": repeats,
        "num_sentences": len(sentences),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "exits_during_timing": stats["num_samples"] - stats["counts"][-1],
        "setting": monitor,
    }


def diagnose(
    model: SentenceTransformer,
    sentences: Sequence[str],
    thresholds: Sequence[float] = PAPER_THRESHOLDS,
    exit_patience: int = 1,
    exit_min_layer: int | None = None,
    batch_size: int = 32,
    measure_overhead: bool = True,
    overhead_sentences: int = 256,
    show_progress_bar: bool = True,
) -> dict[str, Any]:
    """Measure whether ``model`` is exit-compatible (LEAP paper, section 5.2).

    Args:
        model: A SentenceTransformer whose first module is a ``Transformer`` or an ``EarlyExitTransformer``
            (not modified). A query encoder for a kept index (a ``Router`` model) is refused: diagnose its query
            route, ``st_leap.backends.query_side(model)``, or the index model.
        sentences: The texts to measure on (e.g. ``st_leap.resources.stsb_sentences("test")``).
        thresholds: The thetas at which to report exit rate and E[layers].
        exit_patience: k of the exit rule.
        exit_min_layer: l_min of the exit rule; defaults to half the depth.
        batch_size: Encoding batch size.
        measure_overhead: Also time the monitoring overhead (see :func:`measure_monitoring_overhead`).
        overhead_sentences: How many of ``sentences`` to time with.
        show_progress_bar: Show a progress bar while computing layer states.

    Returns:
        A JSON-serialisable dict: per-layer ``similarity_to_final``, ``adjacent_similarity``,
        ``contraction_ratio``; per threshold ``exit_rate``, ``expected_layers``, ``layer_reduction``, ``counts``
        and ``exited_similarity_to_final``; ``monitoring_overhead``; and ``verdict``.
    """
    if isinstance(sentences, str):
        raise ValueError("sentences must be a list of strings, not a single string")
    if router_of(model) is not None:
        raise ValueError(
            "this is a query encoder for a kept index (a Router: queries to a shallow encoder, documents to the index "
            "model); diagnose one encoder: its query route, st_leap.diagnose(st_leap.backends.query_side(model), "
            "texts), or the index model"
        )
    require_torch_encoder(model, "diagnose")
    sentences = [s for s in sentences]
    if not sentences:
        raise ValueError("diagnose needs at least one sentence")
    pooled = layer_pooled_states(model, sentences, batch_size=batch_size, show_progress_bar=show_progress_bar)
    num_layers = pooled.shape[1] - 1
    if exit_min_layer is None:
        exit_min_layer = default_min_layer(num_layers)
    for theta in thresholds:
        validate_exit_args(theta, exit_patience, exit_min_layer, num_layers)
    final = pooled[:, num_layers]
    similarity = layer_similarities(pooled, exit_patience)
    result: dict[str, Any] = {
        "num_layers": num_layers,
        "num_sentences": len(sentences),
        "exit_patience": exit_patience,
        "exit_min_layer": exit_min_layer,
        "similarity_to_final": similarity["to_final"],
        "adjacent_similarity": [
            value if layer > exit_patience else None for layer, value in enumerate(similarity["adjacent"], start=1)
        ],
        "contraction_ratio": [
            ((pooled[:, layer + 1] - pooled[:, layer]).norm(dim=-1) / (pooled[:, layer] - pooled[:, layer - 1]).norm(dim=-1).clamp(min=1e-12))
            .mean()
            .item()
            for layer in range(1, num_layers)
        ],
        "thresholds": {},
    }
    for theta in thresholds:
        exit_layer = exit_layers_from_pooled(pooled, theta, exit_patience, exit_min_layer)
        stats = ExitStats.from_exit_layers(exit_layer, num_layers)
        exited = exit_layer < num_layers
        at_exit = pooled[torch.arange(len(sentences)), exit_layer]
        result["thresholds"][f"{theta:g}"] = {
            **stats.to_dict(),
            "exited_similarity_to_final": _mean_cos(at_exit[exited], final[exited]) if exited.any() else None,
        }
    if measure_overhead:
        result["monitoring_overhead"] = measure_monitoring_overhead(
            model, sentences[:overhead_sentences], batch_size=batch_size
        )
    result["verdict"] = _verdict(result)
    return result


def _verdict(result: dict[str, Any]) -> dict[str, Any]:
    """exit-compatible iff exits happen, land near the final embedding, and pay more than the monitoring costs."""
    at = result["thresholds"].get(f"{VERDICT_THRESHOLD:g}")
    checks: dict[str, dict[str, Any]] = {}
    if at is not None:
        checks["exit_rate"] = {
            "value": at["exit_rate"],
            "rule": f">= {MIN_EXIT_RATE} of samples exit before the last layer at theta={VERDICT_THRESHOLD}",
            "passed": at["exit_rate"] >= MIN_EXIT_RATE,
        }
        checks["exit_fidelity"] = {
            "value": at["exited_similarity_to_final"],
            "rule": f"exited samples' cosine to their final-layer state >= {MIN_EXITED_SIMILARITY}",
            "passed": at["exited_similarity_to_final"] is not None
            and at["exited_similarity_to_final"] >= MIN_EXITED_SIMILARITY,
        }
        if "monitoring_overhead" in result:
            gain = 1.0 - 1.0 / at["layer_reduction"]  # fraction of layer compute skipped
            checks["pays_for_monitoring"] = {
                "value": {"layer_compute_saved": gain, "overhead": result["monitoring_overhead"]["overhead"]},
                "rule": "fraction of layer compute saved > measured monitoring overhead (and > 0)",
                "passed": gain > max(0.0, result["monitoring_overhead"]["overhead"]),
            }
    l_min = result["exit_min_layer"]
    late = result["contraction_ratio"][l_min - 1 :] or result["contraction_ratio"][-1:]
    checks["contraction"] = {
        "value": sum(late) / len(late) if late else None,
        "rule": f"mean contraction ratio gamma_l over layers >= l_min ({l_min}) < 1 (updates shrink with depth)",
        "passed": bool(late) and sum(late) / len(late) < 1.0,
    }
    failed = [name for name, check in checks.items() if not check["passed"]]
    return {"exit_compatible": not failed, "failed": failed, "checks": checks}
