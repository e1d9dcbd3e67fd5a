"""Per-sample exit against the simpler options at equal measured speed (issue 14): one Pareto table and plot per task.

Curves (quality on the y axis, measured encode speed-up against the original model on the x axis):

a. ``original static``: all-MiniLM-L6-v2 truncated at every layer;
b. ``LEAP static``: the LEAP model (``benchmarks.pareto.train``) truncated at every layer;
c. ``AdaptiveLayerLoss static``: sentence-transformers' ``AdaptiveLayerLoss`` + ``MSELoss`` model, trained on the
   same texts, teacher embeddings, steps and batches, truncated at every layer;
d. ``LEAP adaptive``: the LEAP model with per-sample exit over a theta grid (l_min 3, patience 1);
e. with ``--int8``: torch dynamic INT8 (``torch.ao.quantization.quantize_dynamic`` on the Linear layers) of the
   original (static) and of the LEAP model (static and adaptive). sentence-transformers' own ``backend="onnx"`` /
   ``"openvino"`` int8 do not install next to sentence-transformers 6.2 here (optimum pins transformers < 4.58;
   ``docs/backends.md``), so they are not in the plot.

**Quality** is scored from one full-depth pass per model and task that keeps every layer's mean-pooled state
(:func:`st_leap.evaluation.sweep.replay_pooled_states`): a static cut at layer l *is* layer l's pooled state (then
normalised), and adaptive exit replays the package's one exit rule
(:func:`st_leap.exit_policy.exit_layers_from_pooled`), the decisions ``encode`` makes. STS-B test: Spearman x 100
of cosine; SciFact / NFCorpus test: NDCG@10 x 100 through beir (``DenseRetrievalExactSearch`` + ``EvaluateRetrieval``,
cosine), queries and documents at the same setting.

**Speed** is measured, never derived from layer counts: ``model.encode`` of each setting on a seeded sample of the
task's texts (STS-B test sentences; the corpus's documents for retrieval, whose encoding is the cost), interleaved
rounds after warm-up (:func:`st_leap.diagnostics.time_encode`), at 1 and 2 threads and batch 1 and 32. The
speed-up is the median over rounds of (time of the original at full depth) / (time of the setting), measured in
the same round; the band is the 25th-75th percentile of those per-round ratios. A static cut at layer l is timed
once, on a truncated copy of the original: the three models share one architecture (6 x 384 BERT), so a cut at l
costs the same whatever the weights. Adaptive exit is timed on the LEAP model itself, since its cost depends on
where its samples stop.

    HF_HUB_OFFLINE=1 python -m benchmarks.pareto.run --tasks stsb,scifact,nfcorpus --int8

Writes ``benchmarks/results/pareto/pareto.json``, ``pareto.md`` and ``pareto_<task>.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.latency.run import load_stock, truncated_copy
from st_leap import resources
from st_leap.diagnostics import time_encode
from st_leap.evaluation.beir import document_text, load_beir_folder
from st_leap.evaluation.sweep import pairs_spearman, replay_exits, replay_pooled_states
from st_leap.exit_policy import ExitStats
from st_leap.model import as_early_exit

THETAS = (0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.99)
MIN_LAYER, PATIENCE = 3, 1
SPEEDUP_TARGETS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
# Timed texts per encode call, by batch size: enough for a few batches at 32, a few dozen calls at 1.
TIMING_TEXTS = {"stsb": {1: 48, 32: 256}, "retrieval": {1: 16, 32: 32}}


# ----------------------------------------------------------------------------------------------- task data
def task_texts(task: str, limit: int | None = None) -> dict[str, Any]:
    """The texts a task encodes, and what scores them. ``limit`` (smoke runs only) keeps the first ``limit`` STS-B
    pairs, or the first ``limit`` queries with their relevant documents plus ``limit`` others."""
    if task == "stsb":
        s1, s2, gold = (list(x)[:limit] for x in resources.load_stsb("test"))
        sentences = list(dict.fromkeys([*s1, *s2])) if limit else resources.stsb_sentences("test")
        return {"kind": "stsb", "texts": sentences, "s1": s1, "s2": s2, "gold": gold}
    corpus, queries, qrels = load_beir_folder(resources.beir_dir(task), split="test")
    if limit:
        queries = dict(list(queries.items())[:limit])
        qrels = {q: qrels[q] for q in queries}
        keep = {d for q in queries for d in qrels[q]} | set(list(corpus)[:limit])
        corpus = {d: corpus[d] for d in corpus if d in keep}
    doc_ids = list(corpus)
    query_ids = list(queries)
    return {
        "kind": "retrieval", "corpus": corpus, "queries": queries, "qrels": qrels,
        "doc_ids": doc_ids, "query_ids": query_ids,
        "doc_texts": [document_text(corpus[d]) for d in doc_ids],
        "query_texts": [queries[q] for q in query_ids],
    }


class ReplayEncoder:
    """Duck-typed model for beir's ``DenseRetrievalExactSearch`` that returns precomputed embeddings (looked up by
    text), so every setting is scored through beir without encoding again."""

    def __init__(self, query_texts, query_emb, doc_texts, doc_emb) -> None:
        self.queries = {t: i for i, t in enumerate(query_texts)}
        self.docs = {t: i for i, t in enumerate(doc_texts)}
        self.query_emb, self.doc_emb = query_emb, doc_emb

    def encode_queries(self, queries, batch_size=32, **kwargs):
        return self.query_emb[[self.queries[q] for q in queries]]

    def encode_corpus(self, corpus, batch_size=32, **kwargs):
        if isinstance(corpus, dict):
            titles = corpus.get("title") or [""] * len(corpus["text"])
            corpus = [{"title": t, "text": x} for t, x in zip(titles, corpus["text"], strict=True)]
        return self.doc_emb[[self.docs[document_text(doc)] for doc in corpus]]


def ndcg10(data: dict[str, Any], query_emb: torch.Tensor, doc_emb: torch.Tensor) -> float:
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    encoder = ReplayEncoder(data["query_texts"], query_emb, data["doc_texts"], doc_emb)
    retriever = EvaluateRetrieval(DenseRetrievalExactSearch(encoder, batch_size=256, show_progress_bar=False),
                                  k_values=[10], score_function="cos_sim")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = retriever.retrieve(data["corpus"], data["queries"])
        ndcg, *_ = retriever.evaluate(data["qrels"], results, [10])
    return 100.0 * ndcg["NDCG@10"]


# ------------------------------------------------------------------------------------------------- quality
def pooled_states(model: SentenceTransformer, data: dict[str, Any]) -> dict[str, torch.Tensor]:
    if data["kind"] == "stsb":
        return {"texts": replay_pooled_states(model, data["texts"], batch_size=64)}
    return {"queries": replay_pooled_states(model, data["query_texts"], batch_size=64),
            "docs": replay_pooled_states(model, data["doc_texts"], batch_size=32)}


def pick(pooled: torch.Tensor, exit_layer: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(pooled[torch.arange(pooled.shape[0]), exit_layer], dim=-1)


def score(data: dict[str, Any], pooled: dict[str, torch.Tensor], exits: dict[str, torch.Tensor]) -> float:
    if data["kind"] == "stsb":
        index = {s: i for i, s in enumerate(data["texts"])}
        return pairs_spearman(pick(pooled["texts"], exits["texts"]).numpy(), index, data["s1"], data["s2"], data["gold"])
    return ndcg10(data, pick(pooled["queries"], exits["queries"]), pick(pooled["docs"], exits["docs"]))


def static_points(data, pooled) -> list[dict[str, Any]]:
    depth = next(iter(pooled.values())).shape[1] - 1
    rows = []
    for layer in range(1, depth + 1):
        exits = {k: torch.full((v.shape[0],), layer, dtype=torch.long) for k, v in pooled.items()}
        rows.append({"setting": f"static {layer}" if layer < depth else "full", "layers": layer,
                     "expected_layers": float(layer), "quality": score(data, pooled, exits)})
    return rows


def encoded_stats(exits: dict[str, torch.Tensor], depth: int) -> tuple[ExitStats, float | None]:
    """Exit statistics of what is timed (STS-B sentences, or a corpus's documents), and the queries' E[layers]."""
    if "texts" in exits:
        return ExitStats.from_exit_layers(exits["texts"], depth), None
    return ExitStats.from_exit_layers(exits["docs"], depth), float(exits["queries"].float().mean())


def decision_points(data, pooled, kind: str, key: str, values, exits_of) -> list[dict[str, Any]]:
    """Quality and exit statistics of an exit decision at each of its settings: ``exits_of(states, value)`` gives
    the ``(N,)`` exit layers of one text set's ``(N, L + 1, H)`` pooled states; rows are named ``"<kind> <value>"``."""
    depth = next(iter(pooled.values())).shape[1] - 1
    rows = []
    for value in values:
        exits = {k: exits_of(v, value) for k, v in pooled.items()}
        stats, query_layers = encoded_stats(exits, depth)
        rows.append({"setting": f"{kind} {value:g}", key: value, "expected_layers": stats.expected_layers,
                     "exit_rate": stats.exit_rate, "query_expected_layers": query_layers,
                     "quality": score(data, pooled, exits)})
    return rows


def adaptive_points(data, pooled, thetas) -> list[dict[str, Any]]:
    """The package's exit rule, replayed (θ, patience 1, l_min 3)."""
    return decision_points(data, pooled, "adaptive", "theta", thetas,
                           lambda v, theta: torch.from_numpy(replay_exits(v, theta, PATIENCE, MIN_LAYER)))


ORACLE_TAUS = (0.90, 0.95, 0.97, 0.98, 0.99, 0.995)


def oracle_exits(pooled: torch.Tensor, tau: float, min_layer: int = MIN_LAYER) -> torch.Tensor:
    """The first layer l >= l_min whose pooled state is within cos >= tau of the sample's own *final* one (else
    L): the exit a perfect per-sample decision would take. Not implementable (p_L is what exit avoids computing);
    it bounds what any exit criterion, learned or not, can reach at a given E[layers]."""
    cos = torch.nn.functional.cosine_similarity(pooled[:, 1:], pooled[:, -1:], dim=-1)  # (N, L), layer l at l - 1
    ok = cos >= tau
    ok[:, : min_layer - 1] = False
    ok[:, -1] = True
    return ok.float().argmax(dim=1) + 1


def oracle_points(data, pooled, taus=ORACLE_TAUS) -> list[dict[str, Any]]:
    return decision_points(data, pooled, "oracle", "tau", taus, oracle_exits)


PROBE_TAUS = (0.85, 0.90, 0.93, 0.95, 0.97, 0.98)


def fit_probe(pooled: torch.Tensor, ridge: float = 1e-2) -> dict[int, torch.Tensor]:
    """A linear probe per layer predicting cos(p_l, p_L) from the normalised p_l (and a bias), fitted by ridge
    regression on the pooled states of held-out training sentences: the "cheap learned confidence" of issue 14,
    a few hundred parameters per layer."""
    depth = pooled.shape[1] - 1
    final = pooled[:, -1]
    probes = {}
    for layer in range(MIN_LAYER, depth):
        x = torch.nn.functional.normalize(pooled[:, layer], dim=-1).double()
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        y = torch.nn.functional.cosine_similarity(pooled[:, layer], final, dim=-1).double()
        gram = x.T @ x + ridge * x.shape[0] * torch.eye(x.shape[1], dtype=x.dtype)
        probes[layer] = torch.linalg.solve(gram, x.T @ y).float()
    return probes


def probe_exits(pooled: torch.Tensor, probes: dict[int, torch.Tensor], tau: float) -> torch.Tensor:
    depth = pooled.shape[1] - 1
    exit_layer = torch.full((pooled.shape[0],), depth, dtype=torch.long)
    running = torch.ones(pooled.shape[0], dtype=torch.bool)
    for layer in range(MIN_LAYER, depth):
        x = torch.nn.functional.normalize(pooled[:, layer], dim=-1)
        predicted = x @ probes[layer][:-1] + probes[layer][-1]
        done = running & (predicted >= tau)
        exit_layer[done] = layer
        running &= ~done
    return exit_layer


def probe_points(data, pooled, probes, taus=PROBE_TAUS) -> list[dict[str, Any]]:
    return decision_points(data, pooled, "probe", "tau", taus, lambda v, tau: probe_exits(v, probes, tau))


def index_compatibility(data, original: dict[str, torch.Tensor], model: dict[str, torch.Tensor], thetas) -> dict[str, Any]:
    """Issue 13's index question for a trained model: how far its full-depth document embeddings moved from the
    original's (mean cosine), and NDCG@10 when the documents keep the original's embeddings (the index a user
    already has) and the queries come from the model at full depth, at each static cut and at each theta."""
    depth = original["docs"].shape[1] - 1
    docs_orig = pick(original["docs"], torch.full((original["docs"].shape[0],), depth, dtype=torch.long))
    docs_new = pick(model["docs"], torch.full((model["docs"].shape[0],), depth, dtype=torch.long))
    rows = []
    n = model["queries"].shape[0]
    for layer in range(1, depth + 1):
        q = pick(model["queries"], torch.full((n,), layer, dtype=torch.long))
        rows.append({"queries": f"static {layer}" if layer < depth else "full", "expected_layers": float(layer),
                     "quality": ndcg10(data, q, docs_orig)})
    for theta in thetas:
        exit_layer = torch.from_numpy(replay_exits(model["queries"], theta, PATIENCE, MIN_LAYER))
        rows.append({"queries": f"adaptive {theta:g}", "expected_layers": float(exit_layer.float().mean()),
                     "quality": ndcg10(data, pick(model["queries"], exit_layer), docs_orig)})
    return {"doc_cos_to_original": float((docs_orig * docs_new).sum(-1).mean()), "original_docs": rows}


def quantized(model: SentenceTransformer) -> SentenceTransformer:
    warnings.filterwarnings("ignore", message=".*quantiz", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


# --------------------------------------------------------------------------------------------------- speed
def timing_sample(data: dict[str, Any], batch_size: int, seed: int = 0) -> list[str]:
    texts = data["texts"] if data["kind"] == "stsb" else data["doc_texts"]
    n = TIMING_TEXTS[data["kind"]][batch_size if batch_size in (1, 32) else 32]
    return random.Random(seed).sample(texts, min(n, len(texts)))


def time_cell(models: dict[str, Any], data, threads, batch_size, thetas, repeats, depth, int8) -> dict[str, Any]:
    torch.set_num_threads(threads)
    texts = timing_sample(data, batch_size)
    settings: dict[str, dict[str, Any]] = {"full": {}}
    timed_models: dict[str, SentenceTransformer] = {"full": models["stock"]}
    for layer in range(1, depth):
        settings[f"static {layer}"] = {}
        timed_models[f"static {layer}"] = models["truncated"][layer]
    for theta in thetas:
        settings[f"adaptive {theta:g}"] = {"exit_threshold": theta, "exit_min_layer": MIN_LAYER, "exit_patience": PATIENCE}
    if int8:
        settings["int8 full"] = {}
        timed_models["int8 full"] = models["stock_int8"]
        for layer in range(1, depth):
            settings[f"int8 static {layer}"] = {}
            timed_models[f"int8 static {layer}"] = models["truncated_int8"][layer]
        for theta in thetas:
            name = f"int8 adaptive {theta:g}"
            settings[name] = {"exit_threshold": theta, "exit_min_layer": MIN_LAYER, "exit_patience": PATIENCE}
            timed_models[name] = models["leap_int8"]
    timed = time_encode(models["leap"], texts, settings, batch_size=batch_size, repeats=repeats, models=timed_models)
    rows = {}
    for name, row in timed.items():
        rows[name] = {
            "speedup": row["speedup"],
            "band": row["speedup_band"],
            "seconds_median": row["seconds_median"],
            "sample_expected_layers": row["exit_stats"]["expected_layers"] if row["exit_stats"] else None,
        }
    return {"threads": threads, "batch_size": batch_size, "num_texts": len(texts), "rows": rows}


# ------------------------------------------------------------------------------------------------- tables
def curves_for(quality: dict[str, list[dict]], cell: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each curve's points with the cell's measured speed-up attached."""
    rows = cell["rows"]

    def static(points, prefix=""):
        return [{**p, **rows[prefix + p["setting"]]} for p in points]

    def adaptive(points, prefix=""):
        return [{**p, **rows[prefix + p["setting"]]} for p in points]

    curves = {
        "original static": static(quality["original static"]),
        "LEAP static": static(quality["LEAP static"]),
        "AdaptiveLayerLoss static": static(quality["AdaptiveLayerLoss static"]),
        "LEAP adaptive": adaptive(quality["LEAP adaptive"]),
    }
    if "original int8 static" in quality:
        curves["original int8 static"] = static(quality["original int8 static"], "int8 ")
        if "LEAP int8 static" in quality:  # added after the first STS-B run
            curves["LEAP int8 static"] = static(quality["LEAP int8 static"], "int8 ")
        curves["LEAP int8 adaptive"] = adaptive(quality["LEAP int8 adaptive"], "int8 ")
    return curves


def best_at(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    ok = [p for p in points if p["speedup"] >= target]
    return max(ok, key=lambda p: p["quality"]) if ok else None


def frontier_at(points: list[dict[str, Any]], speedup: float) -> float | None:
    """The best quality a curve reaches at a measured speed-up of at least ``speedup`` (its Pareto frontier)."""
    best = best_at(points, speedup)
    return best["quality"] if best else None


def winners(curves: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    table = []
    for target in SPEEDUP_TARGETS:
        entry: dict[str, Any] = {"speedup_at_least": target, "best": {}}
        for name, points in curves.items():
            best = best_at(points, target)
            entry["best"][name] = None if best is None else {"setting": best["setting"], "quality": best["quality"],
                                                             "speedup": best["speedup"]}
        present = {k: v for k, v in entry["best"].items() if v is not None}
        entry["winner"] = max(present, key=lambda k: present[k]["quality"]) if present else None
        table.append(entry)
    return table


def adaptive_vs_static(curves: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each adaptive point against the best static point (of any fp32 static curve) at least as fast."""
    statics = [p | {"curve": name} for name, pts in curves.items() if "static" in name and "int8" not in name for p in pts]
    out = []
    for point in curves["LEAP adaptive"]:
        rival = best_at(statics, point["speedup"])
        out.append({"setting": point["setting"], "speedup": point["speedup"], "quality": point["quality"],
                    "best_static": None if rival is None else f"{rival['curve']}: {rival['setting']}",
                    "best_static_quality": None if rival is None else rival["quality"],
                    "margin": None if rival is None else point["quality"] - rival["quality"]})
    return out


def markdown(result: dict[str, Any]) -> str:
    info = result["run_info"]
    lines = ["# Per-sample exit against static depth, AdaptiveLayerLoss and INT8, at equal measured speed", "",
             f"Command: `{info['command']}`", "",
             f"Models: original `{info['models']['original']}`, LEAP `{info['models']['leap']}`, AdaptiveLayerLoss "
             f"`{info['models']['adaptive_layer']}` (trained by `HF_HUB_OFFLINE=1 python -m benchmarks.pareto.train`). "
             f"Adaptive: l_min {MIN_LAYER}, patience {PATIENCE}. {info['repeats']} interleaved rounds per cell; speed-up = "
             "median per-round time ratio to the original at full depth, [25th-75th percentile band]. Quality from "
             "one full-depth pass per model with the exit rule replayed (see the module docstring).", ""]
    for task, res in result["tasks"].items():
        metric = "STS-B test Spearman x 100" if task == "stsb" else f"{task} test NDCG@10 x 100 (beir)"
        lines += [f"## {task}: {metric}", "", f"Command: `{res['command']}`", "", f"![{task}](pareto_{task}.png)", ""]
        lines += ["Quality of every setting (whole test set):", "", "| curve | setting | E[layers] (of the documents, for retrieval) | exit rate | quality |",
                  "| --- | --- | --- | --- | --- |"]
        for curve, points in res["quality"].items():
            for p in points:
                rate = f"{p['exit_rate']:.1%}" if "exit_rate" in p else ""
                if p.get("query_expected_layers") is not None:
                    rate += f" (queries: E[layers] {p['query_expected_layers']:.2f})"
                lines.append(f"| {curve} | {p['setting']} | {p['expected_layers']:.2f} | {rate} | {p['quality']:.2f} |")
        lines += ["", "The bound of any exit decision, in layers (not timed): the LEAP model's samples exit at the first "
                  f"layer >= {MIN_LAYER} within cos >= tau of their own final state (an oracle: it needs p_L), against its "
                  "static cuts; beside it the learned probe (a ridge regression per layer predicting cos(p_l, p_L) from p_l, "
                  "fitted on held-out training sentences; exit when it predicts >= tau) and the cos(p_l, p_l-1) rule:", "", "| exit decision | E[layers] | exit rate | quality | LEAP static at the whole layers around it |",
                  "| --- | --- | --- | --- | --- |"]
        static = {p["layers"]: p["quality"] for p in res["quality"]["LEAP static"]}
        for p in [*res.get("oracle", []), *res.get("probe", []), *res["quality"]["LEAP adaptive"]]:
            lo = max(1, int(np.floor(p["expected_layers"] + 1e-9)))
            hi = min(int(np.ceil(p["expected_layers"] - 1e-9)), max(static))
            around = " / ".join(f"layer {x}: {static[x]:.2f}" for x in sorted({lo, hi}))
            lines.append(f"| {p['setting']} | {p['expected_layers']:.2f} | {p['exit_rate']:.1%} | {p['quality']:.2f} | "
                         f"{around} |")
        lines.append("")
        if res.get("index"):
            lines += ["Index compatibility (issue 13): documents embedded by the *original* model (the index a user "
                      "already has), queries by the trained model; and how far the trained model's own full-depth "
                      "document embeddings moved (mean cosine to the original's):", "",
                      "| model | doc cos to original | queries | E[layers] of queries | NDCG@10 x 100 |",
                      "| --- | --- | --- | --- | --- |"]
            for name, idx in res["index"].items():
                for row in idx["original_docs"]:
                    lines.append(f"| {name} | {idx['doc_cos_to_original']:.3f} | {row['queries']} | "
                                 f"{row['expected_layers']:.2f} | {row['quality']:.2f} |")
            lines.append("")
        for cell in res["cells"]:
            head = f"{cell['threads']} thread(s), batch {cell['batch_size']} ({cell['num_texts']} texts timed)"
            lines += [f"### {head}", "", "Measured speed-ups:", "",
                      "| setting | speed-up | band | E[layers] of the timed sample |", "| --- | --- | --- | --- |"]
            for name, row in cell["rows"].items():
                sample = f"{row['sample_expected_layers']:.2f}" if row["sample_expected_layers"] is not None else ""
                lines.append(f"| {name} | {row['speedup']:.2f}x | {row['band'][0]:.2f}-{row['band'][1]:.2f} | {sample} |")
            names = list(cell["winners"][0]["best"])
            lines += ["", "Best quality at a measured speed-up of at least S (setting, quality), and the winner:", "",
                      "| S | " + " | ".join(names) + " | winner |", "| --- " * (len(names) + 2) + "|"]
            for entry in cell["winners"]:
                cells = [f"{b['setting']}: {b['quality']:.2f}" if b else "-" for b in entry["best"].values()]
                lines.append(f"| {entry['speedup_at_least']:.2f}x | " + " | ".join(cells) + f" | **{entry['winner'] or '-'}** |")
            lines += ["", "Each adaptive point against the best fp32 static cut at least as fast:", "",
                      "| adaptive | speed-up | quality | best static at >= that speed | its quality | margin |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for row in cell["adaptive_vs_static"]:
                rival = row["best_static"] or "none as fast"
                q = f"{row['best_static_quality']:.2f}" if row["best_static_quality"] is not None else ""
                m = f"{row['margin']:+.2f}" if row["margin"] is not None else ""
                lines.append(f"| {row['setting']} | {row['speedup']:.2f}x | {row['quality']:.2f} | {rival} | {q} | {m} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def plot(task: str, res: dict[str, Any], path: Path) -> None:
    from st_leap.reporting import pyplot, save_figure

    plt = pyplot()
    cells = res["cells"]
    fig, axes = plt.subplots(1, len(cells) + 1, figsize=(4.6 * (len(cells) + 1), 4.2), squeeze=False)
    styles = {"original static": "s--", "LEAP static": "^--", "AdaptiveLayerLoss static": "v--", "LEAP adaptive": "o-",
              "original int8 static": "s:", "LEAP int8 static": "^:", "LEAP int8 adaptive": "o:"}
    for ax, cell in zip(axes[0], cells):
        for name, points in cell["curves"].items():
            points = sorted(points, key=lambda p: p["speedup"])
            xs = [p["speedup"] for p in points]
            ys = [p["quality"] for p in points]
            err = [[max(0.0, p["speedup"] - p["band"][0]) for p in points], [max(0.0, p["band"][1] - p["speedup"]) for p in points]]
            ax.errorbar(xs, ys, xerr=err, fmt=styles.get(name, "o-"), label=name, capsize=2, markersize=4)
        ax.set_title(f"{cell['threads']} thread(s), batch {cell['batch_size']}")
        ax.set_xlabel("measured speed-up vs original (full depth)")
        ax.grid(alpha=0.3)
    layers_ax = axes[0][-1]
    for name in ("original static", "LEAP static", "AdaptiveLayerLoss static", "LEAP adaptive"):
        points = res["quality"][name]
        layers_ax.plot([p["expected_layers"] for p in points], [p["quality"] for p in points], styles[name], label=name,
                       markersize=4)
    oracle = res.get("oracle", [])
    layers_ax.plot([p["expected_layers"] for p in oracle], [p["quality"] for p in oracle], "k*-", label="oracle exit (bound)",
                   markersize=6)
    probe = res.get("probe", [])
    layers_ax.plot([p["expected_layers"] for p in probe], [p["quality"] for p in probe], "mx-", label="learned probe exit",
                   markersize=5)
    layers_ax.set_title("in layers (not timed)")
    layers_ax.set_xlabel("E[layers]")
    layers_ax.grid(alpha=0.3)
    layers_ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("STS-B test Spearman x 100" if task == "stsb" else f"{task} NDCG@10 x 100")
    axes[0][-2].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{task}: quality against measured speed-up")
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="stsb,scifact,nfcorpus")
    parser.add_argument("--original", default="minilm")
    parser.add_argument("--leap", default="runs/pareto/leap")
    parser.add_argument("--adaptive-layer", default="runs/pareto/adaptive_layer")
    parser.add_argument("--thetas", default=",".join(f"{t:g}" for t in THETAS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--int8", action="store_true", help="add torch dynamic INT8 of the original and the LEAP model")
    parser.add_argument("--probe-sentences", type=int, default=4000, help="held-out sentences that fit the probe")
    parser.add_argument("--limit", type=int, default=None, help="smoke runs only: a slice of each task's data")
    parser.add_argument("--out", default=str(results_dir("pareto") / "pareto"))
    args = parser.parse_args(argv)
    for path in (args.leap, args.adaptive_layer):
        if not Path(path).exists():
            raise SystemExit(f"{path} does not exist: train it first (HF_HUB_OFFLINE=1 python -m benchmarks.pareto.train)")
    thetas = [float(t) for t in args.thetas.split(",")]
    torch.set_num_threads(2)
    original_path = resources.resolve_model(args.original)
    stock = load_stock(original_path, "cpu")
    leap = as_early_exit(load_stock(args.leap, "cpu"))
    baseline = SentenceTransformer(args.adaptive_layer, device="cpu")
    depth = leap[0].num_layers
    models: dict[str, Any] = {"stock": stock, "leap": leap,
                              "truncated": {layer: truncated_copy(stock, layer) for layer in range(1, depth)}}
    if args.int8:
        models["stock_int8"] = quantized(stock)
        models["truncated_int8"] = {layer: quantized(m) for layer, m in models["truncated"].items()}
        models["leap_int8"] = quantized(leap)
    out = Path(args.out)
    earlier = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    result: dict[str, Any] = {
        "run_info": {"command": command_line("benchmarks.pareto.run", argv), "repeats": args.repeats, "thetas": thetas,
                     "min_layer": MIN_LAYER, "patience": PATIENCE,
                     "models": {"original": original_path, "leap": args.leap, "adaptive_layer": args.adaptive_layer},
                     "quality": "one full-depth pass per model, exit rule replayed", "int8": "torch dynamic" if args.int8 else None},
        # Tasks of an earlier run that this one does not redo are kept (each with its own command).
        "tasks": {k: v for k, v in earlier.get("tasks", {}).items() if k not in args.tasks.split(",")},
    }
    # The probe's training data: held-out training-distribution sentences (another seed of the sentence pool; the
    # LEAP run saw max_steps x batch of them), never a test set.
    probe_texts = resources.load_sentences(args.probe_sentences, seed=2024)
    probes = fit_probe(replay_pooled_states(leap, probe_texts, batch_size=64))
    result["run_info"]["probe"] = {"sentences": len(probe_texts), "seed": 2024, "ridge": 1e-2}
    for task in args.tasks.split(","):
        data = task_texts(task, args.limit)
        torch.set_num_threads(2)
        original_pooled, baseline_pooled = pooled_states(stock, data), pooled_states(baseline, data)
        quality = {
            "original static": static_points(data, original_pooled),
            "AdaptiveLayerLoss static": static_points(data, baseline_pooled),
        }
        leap_pooled = pooled_states(leap, data)
        index = None
        if data["kind"] == "retrieval":
            index = {"LEAP": index_compatibility(data, original_pooled, leap_pooled, thetas),
                     "AdaptiveLayerLoss": index_compatibility(data, original_pooled, baseline_pooled, [])}
        quality["LEAP static"] = static_points(data, leap_pooled)
        quality["LEAP adaptive"] = adaptive_points(data, leap_pooled, thetas)
        # Layer space only (not timed, not in the speed tables): the bound of any per-sample exit decision.
        oracle = oracle_points(data, leap_pooled)
        probe = probe_points(data, leap_pooled, probes)
        if args.int8:
            quality["original int8 static"] = static_points(data, pooled_states(models["stock_int8"], data))
            leap_int8_pooled = pooled_states(models["leap_int8"], data)
            quality["LEAP int8 static"] = static_points(data, leap_int8_pooled)
            quality["LEAP int8 adaptive"] = adaptive_points(data, leap_int8_pooled, thetas)
        cells = []
        for threads in (int(t) for t in args.threads.split(",")):
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                cell = time_cell(models, data, threads, batch_size, thetas, args.repeats, depth, args.int8)
                cell["curves"] = curves_for(quality, cell)
                cell["winners"] = winners(cell["curves"])
                cell["adaptive_vs_static"] = adaptive_vs_static(cell["curves"])
                cells.append(cell)
                print(f"{task} threads={threads} batch={batch_size}: " + ", ".join(
                    f">={w['speedup_at_least']:g}x {w['winner']}" for w in cell["winners"]), flush=True)
        result["tasks"][task] = {"command": result["run_info"]["command"], "int8": args.int8, "quality": quality,
                                 "oracle": oracle, "probe": probe, "index": index,
                                 "cells": cells}
        plot(task, result["tasks"][task], out.parent / f"{out.name}_{task}.png")
        # Written after every task, so a stopped run keeps the tasks it finished.
        result["meta_info"] = meta_info(result["run_info"]["command"])
        write_result(out, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
