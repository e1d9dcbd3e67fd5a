"""theta sweeps on scored pairs (STS-B by default): quality and cost of every exit threshold against full depth,
Pareto and decision tables, and the per-layer measurement the training benchmarks report.

Calibration (picking an operating point within a quality budget, on STS-B or the user's data) has one owner,
:func:`st_leap.calibrate` (:mod:`st_leap.evaluation.calibration`). The tables and plots of these results are
written by :mod:`st_leap.reporting`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
from tqdm.auto import tqdm

from st_leap import resources
from st_leap.diagnostics import layer_pooled_states, layer_similarities, time_encode
from st_leap.evaluation.consistency import encode_with_exit_layers, nn_consistency
from st_leap.evaluation.early_exit import EarlyExitEmbeddingSimilarityEvaluator
from st_leap.exit_policy import PAPER_THRESHOLDS, ExitStats, exit_layers_from_pooled
from st_leap.model import (
    MODEL_DEFAULT,
    as_early_exit,
    effective_exit_settings,
    exit_kwargs,
    load_model,
    model_name,
    num_layers,
)
from st_leap.modules import encoder_layers
from st_leap.reporting import point_label, run_info

__all__ = ["PAPER_THRESHOLDS", "sweep", "choose_threshold", "decision_table", "mark_pareto", "measure"]

#: Quality budgets (STS-B Spearman points) of the decision table.
DECISION_BUDGETS = (0.1, 0.25, 0.5, 1.0, 2.0)


def pairs_spearman(
    embeddings: np.ndarray, index: dict[str, int], s1: Sequence[str], s2: Sequence[str], gold: Sequence[float]
) -> float:
    """Cosine Spearman x 100 of scored pairs, from embeddings of the distinct sentences (``index``: row of each)."""
    a = embeddings[[index[s] for s in s1]]
    b = embeddings[[index[s] for s in s2]]
    a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return 100.0 * float(spearmanr(gold, (a * b).sum(axis=1)).statistic)


def sweep(
    model: SentenceTransformer | str,
    thresholds: Sequence[float] = PAPER_THRESHOLDS,
    *,
    split: str = "test",
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
    batch_size: int = 32,
    nn_k: int = 10,
    show_progress_bar: bool = True,
    pairs: tuple[Sequence[str], Sequence[str], Sequence[float]] | None = None,
    method: str = "encode",
    static_depths: Sequence[int] = (),
) -> dict[str, Any]:
    """theta sweep on STS-B: quality and cost of every threshold against full depth (paper Tables 2, 4, 5).

    ``static_depths`` adds one static operating point per depth ``n`` (``encode(..., truncate_layers=n)``: every
    sample runs exactly ``n`` layers), so adaptive exit is compared with the simpler static cut on the same rows.

    Each distinct sentence of the split is encoded once at full depth and once per theta with
    ``encode(..., output_value=None)``; the pairs are scored with cosine Spearman. ``pairs`` (``sentences1,
    sentences2, scores``) replaces STS-B with other scored pairs; ``split`` then only labels the result.

    ``method="replay"`` instead runs one full-depth pass that keeps every layer's pooled state
    (:func:`replay_pooled_states`) and replays the exit rule on it for every theta (:func:`replay_exits`): the same
    exit layers and embeddings as ``encode`` (the module's exactness guarantee: a sample's embedding is the mean
    pooling of its exit layer, whatever the batch), at the cost of one encode instead of one per theta. It has no
    per-theta timings. Use it for slow models; cross-check it against ``encode`` on a fast one.

    Returns:
        ``{"full": row, "rows": [row per theta, then per static depth], "decision": [...]}`` where a row holds
        ``kind`` (``"full"``, ``"adaptive"`` or ``"static"``), ``theta``, ``truncate_layers``, ``stsb`` (Spearman x 100), ``delta`` (vs full depth, points), ``expected_layers``,
        ``layer_reduction`` (``L / E[layers]``), ``layers_saved`` (``1 - E[layers] / L``), ``exit_rate``,
        ``distribution`` (per-layer counts), NN@k consistency vs full depth and the encode seconds.
    """
    st_model = load_model(model)
    depth = num_layers(st_model)
    s1, s2, gold = pairs if pairs is not None else resources.load_stsb(split)
    sentences = list(dict.fromkeys([*s1, *s2]))
    index = {s: i for i, s in enumerate(sentences)}
    base_kwargs = exit_kwargs(MODEL_DEFAULT, exit_patience, exit_min_layer)

    if method not in ("encode", "replay"):
        raise ValueError(f"method must be 'encode' or 'replay', got {method!r}")
    settings = effective_exit_settings(st_model, base_kwargs)
    pooled = None
    if method == "replay":
        pooled = replay_pooled_states(st_model, sentences, batch_size=batch_size, show_progress_bar=show_progress_bar)

    bad = [n for n in static_depths if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= depth]
    if bad:
        raise ValueError(f"static_depths must be ints in [1, {depth}], got {list(static_depths)!r}")

    def row_for(
        theta: float | None, full_emb: np.ndarray | None, truncate: int | None = None
    ) -> tuple[dict[str, Any], np.ndarray]:
        if pooled is None:
            emb, layers, seconds = encode_with_exit_layers(
                st_model,
                sentences,
                batch_size=batch_size,
                show_progress_bar=False,
                exit_threshold=theta,
                truncate_layers=truncate,
                **base_kwargs,
            )
        else:
            layers = replay_exits(pooled, theta, settings["exit_patience"], settings["exit_min_layer"])
            if truncate is not None:  # exits at or before the static depth
                layers = np.minimum(layers, truncate)
            emb, seconds = pooled[np.arange(len(sentences)), layers].float().numpy(), None
        dist = ExitStats.from_exit_layers(layers, depth).to_dict()
        row = {
            "kind": "full" if theta is None and truncate is None else ("static" if theta is None else "adaptive"),
            "theta": theta,
            "truncate_layers": truncate,
            "stsb": pairs_spearman(emb, index, s1, s2, gold),
            "expected_layers": dist["expected_layers"],
            "layer_reduction": depth / dist["expected_layers"],
            "layers_saved": 1.0 - dist["expected_layers"] / depth,
            "exit_rate": dist["exit_rate"],
            "distribution": dist["counts"],
            "encode_seconds": seconds,
        }
        if full_emb is not None:
            consistency = nn_consistency(full_emb, emb, layers, k=nn_k, num_layers=depth)
            row["nn_at_k"] = consistency["mean"]
            row["nn_failure_rates"] = consistency["failure_rates"]
            row["nn_per_layer"] = consistency["per_layer"]
        return row, emb

    points = [(float(theta), None) for theta in thresholds] + [(None, int(n)) for n in static_depths]
    progress = tqdm(total=len(points) + 1, desc=f"theta sweep on STS-B {split}", disable=not show_progress_bar)
    full, full_emb = row_for(None, None)
    full["delta"] = 0.0
    full["nn_at_k"] = 1.0
    progress.update(1)
    rows = []
    for theta, truncate in points:
        row, _ = row_for(theta, full_emb, truncate)
        row["delta"] = row["stsb"] - full["stsb"]
        row["measured_speedup"] = full["encode_seconds"] / row["encode_seconds"] if row["encode_seconds"] else None
        rows.append(row)
        progress.update(1)
    progress.close()
    mark_pareto(rows)
    return {
        "measured": f"STS-B {split} cosine Spearman x100 at full depth and per exit threshold, with E[layers], "
        f"layer reduction, exit rate, exit-layer distribution and NN@{nn_k} consistency vs full depth",
        "model": model_name(st_model, model if isinstance(model, str) else None),
        "num_layers": depth,
        "split": split,
        "num_pairs": len(s1),
        "num_sentences": len(sentences),
        "thresholds": [float(t) for t in thresholds],
        "static_depths": [int(n) for n in static_depths],
        "exit_patience": settings["exit_patience"],
        "exit_min_layer": settings["exit_min_layer"],
        "nn_k": nn_k,
        "method": method,
        "full": full,
        "rows": rows,
        "decision": decision_table(rows, full),
        "run_info": run_info(batch_size=batch_size),
    }


def replay_pooled_states(
    model: SentenceTransformer, sentences: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool = True
) -> torch.Tensor:
    """``(N, L + 1, H)`` pooled states of every layer (:func:`st_leap.diagnostics.layer_pooled_states`) for replay.

    Only models whose pipeline after the transformer is mean Pooling (plus optional Normalize) are supported,
    because then a sample's embedding is ``p_exit`` (up to the normalisation, which cosine scores ignore).
    """
    rest = [model[i] for i in range(1, len(model))]
    if (
        not rest
        or not isinstance(rest[0], Pooling)
        or getattr(rest[0], "pooling_mode", "mean") != "mean"
        or any(not isinstance(m, Normalize) for m in rest[1:])
    ):
        raise ValueError(
            "method='replay' needs a Transformer -> mean Pooling [-> Normalize] model; use method='encode'"
        )
    return layer_pooled_states(model, list(sentences), batch_size=batch_size, show_progress_bar=show_progress_bar)


def replay_exits(pooled: torch.Tensor, threshold: float | None, patience: int, min_layer: int) -> np.ndarray:
    """1-based exit layers replayed on ``(N, L + 1, H)`` pooled states with the one exit rule
    (:func:`st_leap.exit_policy.exit_layers_from_pooled`); ``threshold=None`` is full depth."""
    if threshold is None:
        return np.full(pooled.shape[0], pooled.shape[1] - 1, dtype=np.int64)
    return exit_layers_from_pooled(pooled, threshold, patience, min_layer).numpy()


def mark_pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flag (``pareto = True``) the rows that no other row beats on both STS-B and layer reduction."""
    for row in rows:
        row["pareto"] = not any(
            other is not row
            and other["stsb"] >= row["stsb"]
            and other["layer_reduction"] >= row["layer_reduction"]
            and (other["stsb"] > row["stsb"] or other["layer_reduction"] > row["layer_reduction"])
            for other in rows
        )
    return rows


def ranked_within_budget(
    rows: Sequence[dict[str, Any]], full: dict[str, Any], max_quality_drop: float
) -> list[dict[str, Any]]:
    """The rows whose STS-B drop vs full depth is at most ``max_quality_drop``, best first: largest layer
    reduction, then smallest drop."""
    ok = [r for r in rows if full["stsb"] - r["stsb"] <= max_quality_drop + 1e-12]
    return sorted(ok, key=lambda r: (-r["layer_reduction"], full["stsb"] - r["stsb"]))


def choose_threshold(
    rows: Sequence[dict[str, Any]], full: dict[str, Any], max_quality_drop: float
) -> tuple[dict[str, Any], str]:
    """The row with the largest layer reduction whose STS-B drop vs full depth is at most ``max_quality_drop``.

    Ties in layer reduction go to the smaller drop. When no threshold qualifies, or none saves any layer, full
    depth is returned. The second value says why.
    """
    if not math.isfinite(max_quality_drop) or max_quality_drop < 0:
        raise ValueError(f"max_quality_drop must be a finite number >= 0 (Spearman points), got {max_quality_drop}")
    ok = ranked_within_budget(rows, full, max_quality_drop)
    rejected = [r for r in rows if r not in ok]
    why_rejected = (
        "; rejected: "
        + ", ".join(f"{point_label(r)} (drop {full['stsb'] - r['stsb']:.2f})" for r in rejected)
        if rejected
        else ""
    )
    best = ok[0] if ok else None
    if best is None or best["layer_reduction"] <= 1.0 + 1e-9:
        reason = (
            f"no threshold saves layers within a drop of {max_quality_drop:g} points"
            if best is not None
            else f"every threshold loses more than {max_quality_drop:g} points"
        )
        return full, f"full depth: {reason}{why_rejected}"
    drop = full["stsb"] - best["stsb"]
    return best, (
        f"{point_label(best)}: largest layer reduction ({best['layer_reduction']:.2f}x, "
        f"E[layers]={best['expected_layers']:.2f}) among operating points losing at most {max_quality_drop:g} points "
        f"(drop {drop:.2f}: {best['stsb']:.2f} vs {full['stsb']:.2f} at full depth){why_rejected}"
    )


def decision_table(
    rows: Sequence[dict[str, Any]], full: dict[str, Any], budgets: Sequence[float] = DECISION_BUDGETS
) -> list[dict[str, Any]]:
    """For each quality budget (max STS-B drop in points), the threshold :func:`choose_threshold` picks (Table 8)."""
    table = []
    for budget in budgets:
        row, reason = choose_threshold(rows, full, budget)
        table.append(
            {
                "max_quality_drop": budget,
                "kind": row.get("kind", "adaptive" if row["theta"] is not None else "full"),
                "theta": row["theta"],
                "truncate_layers": row.get("truncate_layers"),
                "stsb": row["stsb"],
                "delta": row["stsb"] - full["stsb"],
                "expected_layers": row["expected_layers"],
                "layer_reduction": row["layer_reduction"],
                "exit_rate": row["exit_rate"],
                "reason": reason,
            }
        )
    return table


def sweep_rows_from_runs(runs: Sequence[dict[str, Any]], task: str = "STSBenchmark") -> tuple[dict, list[dict]]:
    """Pareto rows (full depth first) of ``st-leap evaluate`` runs: ``{"theta", "tasks": {task: {"score",
    "exit_stats"}}}`` per threshold, one of them full depth (``theta=None``)."""
    full, rows = None, []
    for run in runs:
        stats = run["tasks"][task]["exit_stats"]
        row = {
            "theta": run["theta"],
            "stsb": run["tasks"][task]["score"],
            "expected_layers": stats["expected_layers"],
            "layer_reduction": stats["layer_reduction"],
            "layers_saved": 1 - stats["expected_layers"] / stats["num_layers"],
            "exit_rate": stats["exit_rate"],
            "distribution": stats["counts"],
        }
        if run["theta"] is None:
            full = row
        else:
            rows.append(row)
    if full is None:
        raise ValueError("the runs need a full-depth run (theta=None) to compare against")
    for row in [full, *rows]:
        row["delta"] = row["stsb"] - full["stsb"]
    mark_pareto(rows)
    return full, rows


# ---------------------------------------------------------------------------------- per-layer measurement
def stsb_spearman(model: SentenceTransformer, split: str = "test", **exit_settings: Any) -> float:
    """Cosine Spearman (a fraction) on STS-B ``split`` through sentence-transformers' evaluator, encoding with
    ``exit_settings`` (e.g. ``exit_threshold=0.95, exit_min_layer=3``)."""
    s1, s2, scores = resources.load_stsb(split)
    evaluator = EarlyExitEmbeddingSimilarityEvaluator(
        s1, s2, scores, main_similarity="cosine", name=f"stsb-{split}", batch_size=64, **exit_settings
    )
    return float(evaluator(model)[evaluator.primary_metric])


def layer_stsb(model: SentenceTransformer, layer: int, split: str = "test") -> float:
    """STS-B Spearman of the embedding computed from layer ``layer`` (the model truncated to its first layers)."""
    first = model[0]
    layers = encoder_layers(first.auto_model)
    removed = list(layers[layer:])
    del layers[layer:]
    try:
        kwargs = {"exit_threshold": None} if hasattr(first, "exit_threshold") else {}
        return stsb_spearman(model, split, **kwargs)
    finally:
        layers.extend(removed)


def measure(
    model: SentenceTransformer,
    thresholds: Sequence[float] = PAPER_THRESHOLDS,
    min_layer: int = 3,
    per_layer_stsb: bool = True,
    split: str = "test",
    method: str = "encode",
) -> dict[str, Any]:
    """Everything the training benchmarks report, on the STS-B ``split`` sentences.

    Returns per-layer similarity to final / adjacent, per-layer STS-B (optional), full-depth STS-B, and for each
    threshold: exit rate, E[layers], exit-layer counts and the exited STS-B.

    ``method="encode"`` encodes once per threshold through the early-exit module (what a user runs);
    ``method="replay"`` runs one full-depth pass and replays the one exit rule on the pooled states of every
    layer (:func:`st_leap.exit_policy.exit_layers_from_pooled`): the same decisions and embeddings for a
    Transformer -> mean Pooling [-> Normalize] model, at a fraction of the cost (used between training probes).
    """
    if method not in ("encode", "replay"):
        raise ValueError(f"method must be 'encode' or 'replay', got {method!r}")
    as_early_exit(model)
    if method == "replay":
        return _measure_replay(model, thresholds, min_layer, per_layer_stsb, split)
    first = model[0]
    sentences = resources.stsb_sentences(split)
    result: dict[str, Any] = {"num_sentences": len(sentences), "num_layers": first.num_layers}
    pooled = layer_pooled_states(model, sentences, batch_size=64, show_progress_bar=False)
    result.update(layer_similarities(pooled))
    result["stsb_full"] = stsb_spearman(model, split, exit_threshold=None)
    if per_layer_stsb:
        result["stsb_per_layer"] = [layer_stsb(model, layer, split) for layer in range(1, first.num_layers)] + [
            result["stsb_full"]
        ]
    result["exits"] = {}
    for theta in thresholds:
        model.encode(sentences, batch_size=64, exit_threshold=theta, exit_min_layer=min_layer, output_value=None)
        stats = first.exit_stats
        result["exits"][str(theta)] = {
            "exit_rate": stats.exit_rate,
            "expected_layers": stats.expected_layers,
            "counts": list(stats.counts),
            "stsb_exited": stsb_spearman(model, split, exit_threshold=theta, exit_min_layer=min_layer),
        }
    return result


def _measure_replay(
    model: SentenceTransformer, thresholds: Sequence[float], min_layer: int, per_layer_stsb: bool, split: str
) -> dict[str, Any]:
    s1, s2, gold = resources.load_stsb(split)
    sentences = resources.stsb_sentences(split)
    index = {s: i for i, s in enumerate(sentences)}
    pooled = replay_pooled_states(model, sentences, batch_size=64, show_progress_bar=False)
    depth = pooled.shape[1] - 1
    result: dict[str, Any] = {"num_sentences": len(sentences), "num_layers": depth, "method": "replay"}
    result.update(layer_similarities(pooled))

    def score(embeddings: torch.Tensor) -> float:
        return pairs_spearman(embeddings.numpy(), index, s1, s2, gold) / 100.0

    result["stsb_full"] = score(pooled[:, -1])
    if per_layer_stsb:
        result["stsb_per_layer"] = [score(pooled[:, layer]) for layer in range(1, depth + 1)]
    result["exits"] = {}
    rows = torch.arange(len(sentences))
    for theta in thresholds:
        exit_layer = torch.from_numpy(replay_exits(pooled, theta, model[0].exit_patience, min_layer))
        stats = ExitStats.from_exit_layers(exit_layer, depth)
        result["exits"][str(theta)] = {
            "exit_rate": stats.exit_rate,
            "expected_layers": stats.expected_layers,
            "counts": list(stats.counts),
            "stsb_exited": score(pooled[rows, exit_layer]),
        }
    return result


def mean_cos_to_final(measurement: dict[str, Any], layers: Sequence[int] = (3, 4, 5)) -> float:
    """Mean of ``to_final`` over the given 1-based layers of a :func:`measure` result."""
    return sum(measurement["to_final"][layer - 1] for layer in layers) / len(layers)


def timed_operating_points(
    model: SentenceTransformer, sentences: Sequence[str], thresholds: Sequence[float], repeats: int = 5
) -> list[dict[str, Any]]:
    """Exit rate, E[layers], STS-B test Spearman and measured encode speed-up at full depth and at each theta.

    The speed-up is the median per-round time ratio to full depth of :func:`st_leap.diagnostics.time_encode`
    (interleaved rounds, batch 32) on ``sentences``; STS-B is scored on the whole test split.
    """
    settings: dict[str, dict[str, Any]] = {"full depth": {"exit_threshold": None}}
    settings.update({f"theta={theta:.2f}": {"exit_threshold": theta} for theta in thresholds})
    timed = time_encode(model, sentences, settings, batch_size=32, repeats=repeats)
    rows = []
    for name, row in timed.items():
        stats = row["exit_stats"]
        rows.append(
            {
                "setting": name,
                "exit_rate": stats["exit_rate"],
                "expected_layers": stats["expected_layers"],
                "layer_reduction": stats["layer_reduction"],
                "speedup": 1.0 / row["ratio_to_reference"],
                "stsb": stsb_spearman(model, "test", **settings[name]),
            }
        )
    return rows
