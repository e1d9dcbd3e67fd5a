"""The search recipe's tables (issue 13): retrieval at full depth, with query exits, against the index you already
have, and with both sides exiting; STS-B at exit; measured query and corpus encoding speed-ups.

Train the recipe (``benchmarks/search/recipe.json``, a :class:`st_leap.training.TrainConfig`), then measure it:

    HF_HUB_OFFLINE=1 python -m st_leap train --config benchmarks/search/recipe.json
    HF_HUB_OFFLINE=1 python -m benchmarks.search.run --model runs/search/leap

**The exit setting is chosen on dev data only**, before any test number is computed (:func:`choose_thresholds`):
STS-B dev Spearman and a retrieval-free signal, agreement (mean cosine to the original model's embedding of the
same text) on held-out short query-like sentences and passages of the shared corpus
(:func:`st_leap.resources.cloze_retrieval_dev`, disjoint from training passages). For each role, the chosen theta
is the lowest of the grid (the most exits) whose agreement stays within ``--agreement-margin`` of the model's own
full-depth agreement and whose STS-B dev stays within ``--stsb-margin`` points of its full depth; none passing
means that role runs at full depth. The test tables then show every theta of the grid, with the chosen one
marked, so the trade-off is visible and the choice is not.

**Quality** is scored from one full-depth pass per model and text set that keeps every layer's mean-pooled state
(:func:`st_leap.evaluation.sweep.replay_pooled_states`), with the package's exit rule replayed on them (what
``encode`` decides); SciFact and NFCorpus test NDCG@10 x 100 through beir (:func:`benchmarks.pareto.run.ndcg10`),
STS-B test Spearman x 100. The original model's pooled states are cached under ``runs/search/pooled/``.

**Speed** is measured, never derived from layer counts: ``encode`` of each setting on a seeded sample of the
task's test queries (the query speed-up) and documents (the corpus speed-up), interleaved rounds after warm-up
(:func:`st_leap.diagnostics.time_encode`), at 1 and 2 threads and batch 1 and 32. The speed-up is the median over
rounds of (the original model's time at full depth) / (the setting's time) in the same round; the band is the
25th-75th percentile of those ratios.

Writes ``benchmarks/results/search/search.{json,md}`` and ``search_<task>.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.latency.run import load_stock
from benchmarks.pareto.run import ndcg10, pick, pooled_states, task_texts
from st_leap import resources
from st_leap.diagnostics import time_encode
from st_leap.evaluation.sweep import pairs_spearman, replay_exits
from st_leap.model import from_pretrained
from st_leap.reporting import pyplot, save_figure

THETAS = (0.85, 0.90, 0.93, 0.95, 0.97, 0.99)
PATIENCE = 1
# Timed texts per encode call, by role and batch size.
TIMING_TEXTS = {"queries": {1: 48, 32: 256}, "docs": {1: 16, 32: 64}}
# Issue 13's targets, in NDCG@10 / Spearman points x 100 and measured speed-up.
TARGETS = {"full_depth": 1.0, "query_exit": 1.0, "index_compatible": 1.5, "both_exit": 3.0,
           "query_speedup": 1.6, "corpus_speedup": 1.5, "stsb_at_exit": 81.0}


# ------------------------------------------------------------------------------------------------- states
def cached_pooled(model, data: dict[str, Any], key: str | None) -> dict[str, torch.Tensor]:
    """:func:`benchmarks.pareto.run.pooled_states`, cached under ``runs/search/pooled/`` when ``key`` is given (the
    original model's states do not change between runs). ``key`` must name the model and the texts."""
    if key is None:
        return pooled_states(model, data)
    path = Path("runs/search/pooled") / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path)
    states = pooled_states(model, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(states, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return states


def full(pooled: torch.Tensor) -> torch.Tensor:
    return pick(pooled, torch.full((pooled.shape[0],), pooled.shape[1] - 1, dtype=torch.long))


def exits(pooled: torch.Tensor, theta: float | None, min_layer: int) -> torch.Tensor:
    return torch.from_numpy(replay_exits(pooled, theta, PATIENCE, min_layer))


def agreement(model_pooled: torch.Tensor, original_pooled: torch.Tensor, theta: float | None, min_layer: int) -> dict:
    """Mean cosine between the model's embedding at ``theta`` and the original's full-depth embedding of the same
    texts (what :class:`st_leap.evaluation.TeacherAgreementEvaluator` reports), and the mean exit layer."""
    layer = exits(model_pooled, theta, min_layer)
    cos = (pick(model_pooled, layer) * full(original_pooled)).sum(-1)
    return {"agreement": float(cos.mean()), "expected_layers": float(layer.float().mean())}


def stsb_score(data: dict[str, Any], pooled: torch.Tensor, theta: float | None, min_layer: int) -> dict:
    layer = exits(pooled, theta, min_layer)
    index = {s: i for i, s in enumerate(data["texts"])}
    spearman = pairs_spearman(pick(pooled, layer).numpy(), index, data["s1"], data["s2"], data["gold"])
    return {"spearman": spearman, "expected_layers": float(layer.float().mean())}


def stsb_data(split: str) -> dict[str, Any]:
    s1, s2, gold = resources.load_stsb(split)
    return {"kind": "stsb", "texts": resources.stsb_sentences(split), "s1": s1, "s2": s2, "gold": gold}


# -------------------------------------------------------------------------------------------- dev choice
def dev_signals(original, original_path: str, model, thetas, min_layer: int, dev_queries: int, dev_documents: int,
                seed: int) -> dict:
    """Per theta (and full depth, ``None``): STS-B dev Spearman, and agreement with the original on held-out
    query-like sentences and passages. No test data."""
    queries, corpus, _ = resources.cloze_retrieval_dev(dev_queries, dev_documents, seed=seed)
    texts = {"queries": list(queries.values()), "documents": list(corpus.values())}
    stsb = stsb_data("dev")
    key = f"{Path(original_path).resolve()}|dev|{seed}|{dev_queries}|{dev_documents}"
    orig = {role: cached_pooled(original, {"kind": "stsb", "texts": t}, f"{key}|{role}")["texts"]
            for role, t in texts.items()}
    mine = {role: pooled_states(model, {"kind": "stsb", "texts": t})["texts"] for role, t in texts.items()}
    stsb_pooled = pooled_states(model, stsb)["texts"]
    rows = []
    for theta in (None, *thetas):
        row: dict[str, Any] = {"theta": theta, "stsb_dev": stsb_score(stsb, stsb_pooled, theta, min_layer)}
        for role in texts:
            row[role] = agreement(mine[role], orig[role], theta, min_layer)
        rows.append(row)
    return {"texts": {role: len(t) for role, t in texts.items()}, "seed": seed, "rows": rows}


def choose_thresholds(dev: dict, agreement_margin: float, stsb_margin: float) -> dict[str, float | None]:
    """The lowest theta per role (``queries``, ``documents``) whose dev agreement is within ``agreement_margin`` of
    full depth's and whose STS-B dev is within ``stsb_margin`` points of full depth's; ``None`` (full depth) when
    no theta passes."""
    base, *rest = dev["rows"]
    chosen: dict[str, float | None] = {}
    for role in ("queries", "documents"):
        passing = [
            row["theta"] for row in rest
            if row[role]["agreement"] >= base[role]["agreement"] - agreement_margin
            and row["stsb_dev"]["spearman"] >= base["stsb_dev"]["spearman"] - stsb_margin
        ]
        chosen[role] = min(passing) if passing else None
    return chosen


# ------------------------------------------------------------------------------------------------ test
def retrieval_rows(data: dict[str, Any], orig: dict, mine: dict, thetas, min_layer: int) -> dict[str, Any]:
    """NDCG@10 of every mode of issue 13 on one task, at full depth and at every theta."""
    docs_orig, docs_full = full(orig["docs"]), full(mine["docs"])
    rows = [{"mode": "original model", "theta": None, "ndcg10": ndcg10(data, full(orig["queries"]), docs_orig)},
            {"mode": "full depth", "theta": None, "ndcg10": ndcg10(data, full(mine["queries"]), docs_full)},
            {"mode": "index-compatible", "theta": None, "ndcg10": ndcg10(data, full(mine["queries"]), docs_orig)}]
    for theta in thetas:
        q_layer, d_layer = exits(mine["queries"], theta, min_layer), exits(mine["docs"], theta, min_layer)
        q = pick(mine["queries"], q_layer)
        q_layers, d_layers = float(q_layer.float().mean()), float(d_layer.float().mean())
        rows += [
            {"mode": "query exit", "theta": theta, "ndcg10": ndcg10(data, q, docs_full), "query_layers": q_layers},
            {"mode": "index-compatible", "theta": theta, "ndcg10": ndcg10(data, q, docs_orig), "query_layers": q_layers},
            {"mode": "both exit", "theta": theta, "ndcg10": ndcg10(data, q, pick(mine["docs"], d_layer)),
             "query_layers": q_layers, "doc_layers": d_layers},
        ]
    return {"doc_cos_to_original": float((docs_orig * docs_full).sum(-1).mean()),
            "query_cos_to_original": float((full(orig["queries"]) * full(mine["queries"])).sum(-1).mean()),
            "rows": rows}


def timed(stock, model, texts: list[str], thetas, threads: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """Speed-up of the model at full depth and at each theta over the original model at full depth."""
    torch.set_num_threads(threads)
    settings: dict[str, dict[str, Any]] = {"original": {}, "full depth": {"exit_threshold": None}}
    settings.update({f"theta {t:g}": {"exit_threshold": t} for t in thetas})
    result = time_encode(model, texts, settings, batch_size=batch_size, repeats=repeats, models={"original": stock},
                         show_progress_bar=False)
    out = {name: {"speedup": row["speedup"], "band": row["speedup_band"], "seconds_median": row["seconds_median"]}
           for name, row in result.items()}
    return {"threads": threads, "batch_size": batch_size, "num_texts": len(texts), "rows": out}


def timing_sample(texts: list[str], n: int, seed: int = 0) -> list[str]:
    return random.Random(seed).sample(texts, min(n, len(texts)))


# ------------------------------------------------------------------------------------------------ checks
def speed_of(cells: list[dict], theta: float | None) -> dict[str, float]:
    """The lowest median speed-up of a setting over all timed cells, per batch size (the issue asks for >= X at
    batch 1 *and* at batch 32)."""
    name = "full depth" if theta is None else f"theta {theta:g}"
    out: dict[str, float] = {}
    for cell in cells:
        key = f"batch {cell['batch_size']}"
        out[key] = min(out.get(key, float("inf")), cell["rows"][name]["speedup"])
    return out


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's targets against what was measured, at the dev-chosen thetas: queries at the queries' theta;
    both sides at the documents' theta (a role whose theta is ``None`` runs at full depth, which cannot meet a
    speed target)."""
    q_theta, d_theta = result["chosen"]["queries"], result["chosen"]["documents"]
    out = []
    for task, res in result["tasks"].items():
        ndcg = {(row["mode"], row["theta"]): row["ndcg10"] for row in res["rows"]}
        original = ndcg[("original model", None)]
        at_full = ndcg[("full depth", None)]
        q_speed, d_speed = speed_of(res["speed"]["queries"], q_theta), speed_of(res["speed"]["docs"], d_theta)
        for mode, theta, margin, speed, speed_target, value in (
            ("full depth", None, TARGETS["full_depth"], None, None, at_full),
            ("query exit", q_theta, TARGETS["query_exit"], q_speed, TARGETS["query_speedup"],
             ndcg.get(("query exit", q_theta), at_full)),
            ("index-compatible", q_theta, TARGETS["index_compatible"], q_speed, TARGETS["query_speedup"],
             ndcg[("index-compatible", q_theta)]),
            ("both exit", d_theta, TARGETS["both_exit"], d_speed, TARGETS["corpus_speedup"],
             ndcg.get(("both exit", d_theta), at_full)),
        ):
            speed_ok = speed_target is None or min(speed.values()) >= speed_target
            out.append({"task": task, "mode": mode, "theta": theta, "ndcg10": value, "target": original - margin,
                        "speedup": speed, "speed_target": speed_target,
                        "met": bool(value >= original - margin and speed_ok)})
    stsb = {row["theta"]: row for row in result["stsb"]["rows"]}
    spearman = stsb[q_theta]["spearman"]
    out.append({"task": "stsb", "mode": "at the queries' theta", "theta": q_theta, "spearman": spearman,
                "target": TARGETS["stsb_at_exit"], "met": bool(spearman >= TARGETS["stsb_at_exit"])})
    return out


# ---------------------------------------------------------------------------------------------- report
def fmt_speed(speed: dict | None) -> str:
    if not speed:
        return "-"
    return " / ".join(f"{v:.2f}x" for v in speed.values())


def markdown(result: dict[str, Any]) -> str:
    info = result["run_info"]
    chosen = result["chosen"]
    lines = ["# The search recipe: retrieval, index compatibility and speed", "",
             f"Command: `{info['command']}`", "",
             f"Model: `{info['model']}` (trained by `{info['train_command']}`); original: `{info['original']}`; "
             f"exit rule: theta over the grid, l_min {info['min_layer']}, patience {PATIENCE}.", "",
             "## The exit setting, chosen on dev data", "",
             f"Dev data: STS-B dev, and {result['dev']['texts']['queries']} held-out query-like sentences and "
             f"{result['dev']['texts']['documents']} held-out passages of the shared corpus "
             "(`resources.cloze_retrieval_dev`, seed "
             f"{result['dev']['seed']}). Rule: the lowest theta whose agreement with the original stays within "
             f"{info['agreement_margin']} of full depth's and whose STS-B dev stays within {info['stsb_margin']} points.",
             "", "| theta | STS-B dev | query agreement (E[layers]) | passage agreement (E[layers]) |",
             "|---|---|---|---|"]
    for row in result["dev"]["rows"]:
        theta = "full" if row["theta"] is None else f"{row['theta']:g}"
        lines.append(f"| {theta} | {row['stsb_dev']['spearman']:.2f} | {row['queries']['agreement']:.4f} "
                     f"({row['queries']['expected_layers']:.2f}) | {row['documents']['agreement']:.4f} "
                     f"({row['documents']['expected_layers']:.2f}) |")
    lines += ["", f"Chosen: queries theta = {chosen['queries']}, documents theta = {chosen['documents']} "
              "(None: full depth).", "", "## Targets (issue 13), at the chosen setting", "",
              "Speed-ups: the lowest median over 1 and 2 threads, at batch 1 / batch 32.", "",
              "| task | mode | theta | measured | target | speed-up (batch 1 / 32) | speed target | met |",
              "|---|---|---|---|---|---|---|---|"]
    for c in result["checks"]:
        value = c.get("ndcg10", c.get("spearman"))
        target = c.get("speed_target")
        speed_target = "-" if target is None else f">= {target:g}x"
        lines.append(f"| {c['task']} | {c['mode']} | {c['theta']} | {value:.2f} | >= {c['target']:.2f} | "
                     f"{fmt_speed(c.get('speedup'))} | {speed_target} | {'yes' if c['met'] else '**no**'} |")
    for task, res in result["tasks"].items():
        lines += ["", f"## {task} test, NDCG@10 x 100", "",
                  f"Mean cosine of the model's full-depth vectors to the original's: documents "
                  f"{res['doc_cos_to_original']:.3f}, queries {res['query_cos_to_original']:.3f}.", "",
                  "Modes: *full depth*: the model on both sides; *query exit*: queries exit, the model's documents at "
                  "full depth; *index-compatible*: queries from the model (exiting at theta), documents from the "
                  "original model (the index you already have); *both exit*: queries and documents exit at theta.", "",
                  "| mode | theta | NDCG@10 | query E[layers] | doc E[layers] |", "|---|---|---|---|---|"]
        for row in res["rows"]:
            theta = "-" if row["theta"] is None else f"{row['theta']:g}"
            role = "documents" if row["mode"] == "both exit" else "queries"
            mark = " (chosen)" if row["theta"] is not None and row["theta"] == chosen[role] else ""
            q_layers, d_layers = row.get("query_layers"), row.get("doc_layers")
            lines.append(f"| {row['mode']} | {theta}{mark} | {row['ndcg10']:.2f} | "
                         f"{'-' if q_layers is None else f'{q_layers:.2f}'} | {'-' if d_layers is None else f'{d_layers:.2f}'} |")
        for role, cells in res["speed"].items():
            lines += ["", f"Measured {'query' if role == 'queries' else 'corpus'} encoding speed-up over the original "
                      f"model ({role}: a seeded sample of the test {role}), median (25th-75th percentile):", "",
                      "| setting | " + " | ".join(f"{c['threads']} thr, batch {c['batch_size']}" for c in cells) + " |",
                      "|---|" + "---|" * len(cells)]
            for name in cells[0]["rows"]:
                lines.append(f"| {name} | " + " | ".join(
                    f"{c['rows'][name]['speedup']:.2f}x ({c['rows'][name]['band'][0]:.2f}-{c['rows'][name]['band'][1]:.2f})"
                    for c in cells) + " |")
    lines += ["", "## STS-B test, Spearman x 100", "", "| setting | Spearman | E[layers] |", "|---|---|---|",
              f"| original model | {result['stsb']['original']:.2f} | 6 |"]
    for row in result["stsb"]["rows"]:
        theta = "full depth" if row["theta"] is None else f"theta {row['theta']:g}"
        lines.append(f"| {theta} | {row['spearman']:.2f} | {row['expected_layers']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def plot(task: str, res: dict[str, Any], original: float, path: Path) -> None:
    """NDCG@10 against the measured speed-up of the side that exits (2 threads, batch 32 where timed)."""
    try:
        plt = pyplot()
    except ImportError:  # plots are optional here: the JSON and markdown carry every number
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for mode, role, marker in (("query exit", "queries", "o"), ("index-compatible", "queries", "s"),
                               ("both exit", "docs", "^")):
        cell = res["speed"][role][-1]
        points = [(cell["rows"][f"theta {r['theta']:g}"]["speedup"], r["ndcg10"])
                  for r in res["rows"] if r["mode"] == mode and r["theta"] is not None]
        if points:
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker=marker, label=f"{mode} ({'query' if role == 'queries' else 'corpus'} speed-up)")
    ax.axhline(original, color="grey", linestyle="--", label="original model, full depth")
    cell = res["speed"]["queries"][-1]
    ax.set_xlabel(f"measured speed-up over the original ({cell['threads']} threads, batch {cell['batch_size']})")
    ax.set_ylabel("NDCG@10 x 100")
    ax.set_title(f"{task}: the search recipe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/search/leap")
    parser.add_argument("--original", default="minilm")
    parser.add_argument("--tasks", default="scifact,nfcorpus")
    parser.add_argument("--thetas", default=",".join(f"{t:g}" for t in THETAS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--agreement-margin", type=float, default=0.01)
    parser.add_argument("--stsb-margin", type=float, default=1.0, help="STS-B dev points x 100")
    parser.add_argument("--dev-queries", type=int, default=500)
    parser.add_argument("--dev-documents", type=int, default=1000)
    parser.add_argument("--dev-seed", type=int, default=12345,
                        help="the training config's sentence_seed: the dev passages are then disjoint from the training passages")
    parser.add_argument("--limit", type=int, default=None, help="smoke runs only: a slice of each task's data")
    parser.add_argument("--out", default=str(results_dir("search") / "search"))
    parser.add_argument("--train-command", default="HF_HUB_OFFLINE=1 python -m st_leap train --config benchmarks/search/recipe.json")
    args = parser.parse_args(argv)
    if not Path(args.model).exists():
        raise SystemExit(f"{args.model} does not exist: train it first ({args.train_command})")
    thetas = [float(t) for t in args.thetas.split(",")]
    torch.set_num_threads(2)
    original_path = resources.resolve_model(args.original)
    stock = load_stock(original_path, "cpu")
    model = from_pretrained(args.model, device="cpu")
    min_layer = int(model[0].exit_settings_for("query")["exit_min_layer"])
    command = command_line("benchmarks.search.run", argv)
    result: dict[str, Any] = {"run_info": {"command": command, "model": args.model, "original": original_path,
                                           "train_command": args.train_command, "thetas": thetas, "min_layer": min_layer,
                                           "agreement_margin": args.agreement_margin, "stsb_margin": args.stsb_margin,
                                           "repeats": args.repeats}}
    print("[1/3] dev signals (STS-B dev, agreement on held-out texts) and the exit setting", flush=True)
    result["dev"] = dev_signals(stock, original_path, model, thetas, min_layer, args.dev_queries, args.dev_documents, args.dev_seed)
    chosen = choose_thresholds(result["dev"], args.agreement_margin, args.stsb_margin)
    result["chosen"] = chosen
    print(f"chosen on dev: {chosen}", flush=True)

    print("[2/3] STS-B test", flush=True)
    stsb = stsb_data("test") if not args.limit else task_texts("stsb", args.limit)
    stsb_pooled = pooled_states(model, stsb)["texts"]
    original_stsb = stsb_score(stsb, pooled_states(stock, stsb)["texts"], None, min_layer)["spearman"]
    result["stsb"] = {"original": original_stsb,
                      "rows": [{"theta": t, **stsb_score(stsb, stsb_pooled, t, min_layer)} for t in (None, *thetas)]}
    result["tasks"] = {}
    threads = [int(t) for t in args.threads.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for task in args.tasks.split(","):
        print(f"[3/3] {task}: pooled states, NDCG@10 per mode, timing", flush=True)
        data = task_texts(task, args.limit)
        torch.set_num_threads(2)
        orig = cached_pooled(stock, data, None if args.limit else f"{Path(original_path).resolve()}|{task}")
        mine = pooled_states(model, data)
        res = retrieval_rows(data, orig, mine, thetas, min_layer)
        res["speed"] = {
            role: [timed(stock, model, timing_sample(data["query_texts" if role == "queries" else "doc_texts"],
                                                     TIMING_TEXTS[role][b if b in (1, 32) else 32]),
                         thetas, t, b, args.repeats) for t in threads for b in batch_sizes]
            for role in ("queries", "docs")
        }
        result["tasks"][task] = res
        original = next(r["ndcg10"] for r in res["rows"] if r["mode"] == "original model")
        plot(task, res, original, Path(args.out).parent / f"{Path(args.out).name}_{task}.png")
        result["checks"] = checks(result)
        result["meta_info"] = meta_info(command)
        write_result(args.out, result, markdown(result))  # after every task: a stopped run keeps what it measured
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
