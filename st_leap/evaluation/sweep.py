from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from st_leap.evaluation._utils import (
    MODEL_DEFAULT,
    effective_exit_settings,
    exit_kwargs,
    format_theta,
    load_model,
    model_name,
    num_layers,
    run_info,
    write_json,
)
from st_leap.evaluation.consistency import encode_with_exit_layers, exit_layer_distribution, nn_consistency

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: The paper's theta grid (Tables 2, 5).
PAPER_THRESHOLDS = (0.90, 0.92, 0.93, 0.95, 0.97, 0.99)
#: Quality budgets (STS-B Spearman points) of the decision table.
DECISION_BUDGETS = (0.1, 0.25, 0.5, 1.0, 2.0)


def stsb_spearman(
    embeddings: np.ndarray, index: dict[str, int], s1: Sequence[str], s2: Sequence[str], gold: Sequence[float]
) -> float:
    """Cosine Spearman x 100 of the STS-B pairs, from embeddings of the distinct sentences."""
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
) -> dict[str, Any]:
    """theta sweep on STS-B: quality and cost of every threshold against full depth (paper Tables 2, 4, 5).

    Each distinct sentence of the split is encoded once at full depth and once per theta with
    ``encode(..., output_value=None)``; the pairs are scored with cosine Spearman. ``pairs`` (``sentences1,
    sentences2, scores``) replaces STS-B with other scored pairs; ``split`` then only labels the result.

    ``method="replay"`` instead runs one full-depth pass that keeps every layer's pooled state
    (:func:`replay_pooled_states`) and replays the exit rule on it for every theta (:func:`replay_exits`): the same
    exit layers and embeddings as ``encode`` (the module's exactness guarantee: a sample's embedding is the mean
    pooling of its exit layer, whatever the batch), at the cost of one encode instead of one per theta. It has no
    per-theta timings. Use it for slow models; cross-check it against ``encode`` on a fast one.

    Returns:
        ``{"full": row, "rows": [row per theta], "pareto": [...], "decision": [...]}`` where a row holds
        ``theta``, ``stsb`` (Spearman x 100), ``delta`` (vs full depth, points), ``expected_layers``,
        ``layer_reduction`` (``L / E[layers]``), ``layers_saved`` (``1 - E[layers] / L``), ``exit_rate``,
        ``distribution`` (per-layer counts), NN@k consistency vs full depth and the encode seconds.
    """
    from st_leap import resources

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

    def row_for(theta: float | None, full_emb: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray]:
        if pooled is None:
            emb, layers, seconds = encode_with_exit_layers(
                st_model,
                sentences,
                batch_size=batch_size,
                show_progress_bar=False,
                exit_threshold=theta,
                **base_kwargs,
            )
        else:
            layers = replay_exits(pooled, theta, settings["exit_patience"], settings["exit_min_layer"])
            emb, seconds = pooled[np.arange(len(sentences)), layers].float().numpy(), None
        dist = exit_layer_distribution(layers, depth)
        row = {
            "theta": theta,
            "stsb": stsb_spearman(emb, index, s1, s2, gold),
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

    progress = tqdm(total=len(thresholds) + 1, desc=f"theta sweep on STS-B {split}", disable=not show_progress_bar)
    full, full_emb = row_for(None, None)
    full["delta"] = 0.0
    full["nn_at_k"] = 1.0
    progress.update(1)
    rows = []
    for theta in thresholds:
        row, _ = row_for(float(theta), full_emb)
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
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    from st_leap.diagnostics import layer_pooled_states

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
    from st_leap.exit_policy import exit_layers_from_pooled

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


def choose_threshold(
    rows: Sequence[dict[str, Any]], full: dict[str, Any], max_quality_drop: float
) -> tuple[dict[str, Any], str]:
    """The row with the largest layer reduction whose STS-B drop vs full depth is at most ``max_quality_drop``.

    Ties in layer reduction go to the smaller drop. When no threshold qualifies, or none saves any layer, full
    depth is returned. The second value says why.
    """
    if not math.isfinite(max_quality_drop) or max_quality_drop < 0:
        raise ValueError(f"max_quality_drop must be a finite number >= 0 (Spearman points), got {max_quality_drop}")
    ok = [r for r in rows if full["stsb"] - r["stsb"] <= max_quality_drop + 1e-12]
    rejected = [r for r in rows if r not in ok]
    why_rejected = (
        "; rejected: "
        + ", ".join(f"theta={format_theta(r['theta'])} (drop {full['stsb'] - r['stsb']:.2f})" for r in rejected)
        if rejected
        else ""
    )
    best = max(ok, key=lambda r: (r["layer_reduction"], -(full["stsb"] - r["stsb"])), default=None)
    if best is None or best["layer_reduction"] <= 1.0 + 1e-9:
        reason = (
            f"no threshold saves layers within a drop of {max_quality_drop:g} points"
            if best is not None
            else f"every threshold loses more than {max_quality_drop:g} points"
        )
        return full, f"full depth: {reason}{why_rejected}"
    drop = full["stsb"] - best["stsb"]
    return best, (
        f"theta={format_theta(best['theta'])}: largest layer reduction ({best['layer_reduction']:.2f}x, "
        f"E[layers]={best['expected_layers']:.2f}) among thresholds losing at most {max_quality_drop:g} points "
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
                "theta": row["theta"],
                "stsb": row["stsb"],
                "delta": row["stsb"] - full["stsb"],
                "expected_layers": row["expected_layers"],
                "layer_reduction": row["layer_reduction"],
                "exit_rate": row["exit_rate"],
                "reason": reason,
            }
        )
    return table


def calibrate(
    model: SentenceTransformer | str,
    max_quality_drop: float,
    *,
    thresholds: Sequence[float] = PAPER_THRESHOLDS,
    split: str = "dev",
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
    batch_size: int = 32,
    show_progress_bar: bool = True,
    pairs: tuple[Sequence[str], Sequence[str], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Pick the threshold with the largest speed-up whose STS-B quality drop on held-out data stays within a budget.

    Speed-up is the layer reduction ``L / E[layers]`` (deterministic; wall-clock timings are recorded too but not
    used to choose, as they depend on the machine's load). The held-out data is STS-B ``dev`` by default, so the
    test split stays untouched.

    Args:
        model: st_leap model, path or Hub id.
        max_quality_drop: Largest acceptable drop in STS-B cosine Spearman, in points (x100), e.g. ``0.5``.
        thresholds: Candidate thetas.
        split: STS-B split used for calibration.
        pairs: Other held-out scored pairs ``(sentences1, sentences2, scores)`` instead of STS-B.

    Returns:
        The sweep result plus ``"max_quality_drop"``, ``"picked"`` (the chosen row: ``theta`` is ``None`` for full
        depth) and ``"reason"``.
    """
    result = sweep(
        model,
        thresholds,
        split=split,
        exit_patience=exit_patience,
        exit_min_layer=exit_min_layer,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        pairs=pairs,
    )
    picked, reason = choose_threshold(result["rows"], result["full"], max_quality_drop)
    result["measured"] = f"calibration on STS-B {split}: " + result["measured"]
    result["max_quality_drop"] = max_quality_drop
    result["picked"] = {k: v for k, v in picked.items() if k != "nn_per_layer"}
    result["reason"] = reason
    return result


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def sweep_markdown(result: dict[str, Any]) -> str:
    """Pareto table, exit-layer distribution, NN@k table and decision table of a :func:`sweep` result."""
    full, rows, k = result["full"], result["rows"], result.get("nn_k", 10)
    depth = result["num_layers"]
    lines = [
        f"# theta sweep: {result['model']} on STS-B {result['split']}",
        "",
        f"{result['num_pairs']} pairs, {result['num_sentences']} distinct sentences; L = {depth}, "
        f"patience k = {result['exit_patience']}, l_min = {result['exit_min_layer']}.",
        "",
    ]
    if result["run_info"].get("command"):
        lines += [f"Command: `{result['run_info']['command']}`", ""]
    lines += [
        "## Pareto table (paper Tables 2, 5)",
        "",
        f"| theta | STS-B | delta | E[layers] | layer reduction | layers saved | exit rate | NN@{k} | Pareto | measured speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in [full, *rows]:
        lines.append(
            f"| {format_theta(row['theta'])} | {row['stsb']:.2f} | {row['delta']:+.2f} | {row['expected_layers']:.3f} | "
            f"{row['layer_reduction']:.3f}x | {100 * row['layers_saved']:.1f}% | {100 * row['exit_rate']:.1f}% | "
            f"{_fmt(row.get('nn_at_k'), '.3f')} | {'yes' if row.get('pareto') else ('' if row['theta'] is None else 'no')} | "
            f"{_fmt(row.get('measured_speedup'), '.2f')}{'x' if row.get('measured_speedup') else ''} |"
        )
    lines += [
        "",
        "## Exit-layer distribution (share of sentences stopping after each layer)",
        "",
        "| theta | " + " | ".join(f"L{i}" for i in range(1, depth + 1)) + " |",
        "| --- | " + " | ".join("---:" for _ in range(depth)) + " |",
    ]
    for row in [full, *rows]:
        n = sum(row["distribution"]) or 1
        lines.append(
            f"| {format_theta(row['theta'])} | "
            + " | ".join(f"{100 * c / n:.1f}%" for c in row["distribution"])
            + " |"
        )
    lines += [
        "",
        f"## NN@{k} failure rates per exit layer (paper Tables 4, 13)",
        "",
        f"Share of sentences whose {k} nearest neighbours (early-exit index) keep fewer than 50% / 30% of their "
        "full-depth neighbours.",
        "",
        f"| theta | exit layer | n | mean NN@{k} | NN@{k} < 0.5 | NN@{k} < 0.3 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        overall = row["nn_failure_rates"]
        lines.append(
            f"| {format_theta(row['theta'])} | all | {sum(row['distribution'])} | {_fmt(row['nn_at_k'], '.3f')} | "
            f"{100 * overall['<0.5']:.1f}% | {100 * overall['<0.3']:.1f}% |"
        )
        for layer in row["nn_per_layer"]:
            if layer["n"]:
                lines.append(
                    f"| | {layer['layer']} | {layer['n']} | {_fmt(layer['mean'], '.3f')} | "
                    f"{100 * layer['failure_rates']['<0.5']:.1f}% | {100 * layer['failure_rates']['<0.3']:.1f}% |"
                )
    lines += [
        "",
        "## Decision table (paper Table 8): largest layer reduction within a quality budget",
        "",
        "| max STS-B drop | theta | STS-B | delta | E[layers] | layer reduction | exit rate |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["decision"]:
        lines.append(
            f"| {row['max_quality_drop']:g} | {format_theta(row['theta'])} | {row['stsb']:.2f} | {row['delta']:+.2f} | "
            f"{row['expected_layers']:.3f} | {row['layer_reduction']:.3f}x | {100 * row['exit_rate']:.1f}% |"
        )
    if "picked" in result:
        lines += [
            "",
            f"## Calibration (max drop {result['max_quality_drop']:g} points)",
            "",
            f"Picked: {result['reason']}",
        ]
    return "\n".join(lines) + "\n"


def plot_sweep(result: dict[str, Any], path: str | Path) -> Path:
    """PNG: STS-B vs layer reduction per theta (left), exit rate and E[layers] per theta (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    full, rows = result["full"], result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([r["layer_reduction"] for r in rows], [r["stsb"] for r in rows], "o-", label="early exit")
    for r in rows:
        left.annotate(
            format_theta(r["theta"]), (r["layer_reduction"], r["stsb"]), textcoords="offset points", xytext=(4, 4)
        )
    left.scatter([1.0], [full["stsb"]], marker="*", s=150, color="black", zorder=3, label="full depth")
    left.set_xlabel("layer reduction L / E[layers]")
    left.set_ylabel(f"STS-B {result['split']} cosine Spearman x100")
    left.set_title(f"{result['model']}: quality vs speed-up")
    left.legend()
    thetas = [r["theta"] for r in rows]
    right.plot(thetas, [100 * r["exit_rate"] for r in rows], "o-", color="tab:red", label="exit rate (%)")
    right.set_xlabel("theta")
    right.set_ylabel("exit rate (%)", color="tab:red")
    twin = right.twinx()
    twin.plot(thetas, [r["expected_layers"] for r in rows], "s--", color="tab:blue", label="E[layers]")
    twin.set_ylabel("E[layers]", color="tab:blue")
    twin.set_ylim(0, result["num_layers"] + 0.5)
    right.set_title("exit rate and E[layers] per theta")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_sweep_report(result: dict[str, Any], out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(result, out / f"{stem}.json"), "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["md"].write_text(sweep_markdown(result), encoding="utf-8")
    plot_sweep(result, paths["png"])
    return paths
