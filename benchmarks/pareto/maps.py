"""Per-sample exit against a static cut when every layer is read through its exit map, at equal measured speed.

With exit maps (``st_leap.exit_maps``) a sample stopped at any layer lands in the final layer's space, so a batch
of mixed exit layers no longer mixes spaces. This is the case where per-sample exit might beat a static cut of the
same model. For each model (one with maps) and task, three families of settings:

- ``static``: every sample cut at layer d (``truncate_layers=d``), through layer d's map;
- ``exit``: the package's exit rule (``cos(p_l, p_{l-1}) >= theta`` from layer ``--min-layer``; the rule reads the
  unmapped pooled states, as ``encode`` does), each sample through the map of its exit layer;
- ``oracle``: each sample stops at the first layer whose mapped embedding is within cosine ``tau`` of its own
  full-depth embedding. It needs the full depth to decide, so it cannot be served; it bounds what any exit rule
  on this model's maps could reach at that mean depth.

Quality is scored from one pass per model and text set that keeps every layer (each layer's mapped embedding, and
the unmapped pooled states the rule reads), which is what ``encode`` computes (the exit-map tests
check mixed exit layers in one batch against one at a time). STS-B test: Spearman x 100, both sentences at the
setting. SciFact / NFCorpus test: NDCG@10 x 100 of queries at the setting against the original model's full-depth
document embeddings (the index stays). Speed is measured, never derived from layer counts: ``model.encode`` of
each static depth and each theta on STS-B test sentences, 1 thread, batch 1 and 32, interleaved rounds, against
the original model at full depth (:func:`st_leap.diagnostics.time_encode`). Per-sample exit wins a point when its
quality is above the static curve (linear between depths) at its own measured speed-up.

    HF_HUB_OFFLINE=1 python -m benchmarks.pareto.maps --models "original + maps=runs/query/encoders/original_maps"
    HF_HUB_OFFLINE=1 python -m benchmarks.pareto.maps --query-speed   # then: each task's own queries

``--query-speed`` times the same settings on each retrieval task's own test queries (an exit's cost depends on
where those texts stop) and judges every exit setting on that task at its measured speed-up.

Writes ``benchmarks/results/pareto/maps.json``, ``maps.md`` and ``maps.png``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_plot, write_result
from benchmarks.query.run import beir_evaluator
from st_leap import resources
from st_leap.diagnostics import time_encode
from st_leap.evaluation.sweep import pairs_spearman, replay_exits
from st_leap.exit_maps import exit_maps_module, hidden_state_batches, mapped_layer_embeddings
from st_leap.exit_policy import mean_pool

THETAS = (0.80, 0.85, 0.90, 0.93, 0.95, 0.97)
TAUS = (0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.99)


def layer_states(model: SentenceTransformer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """From one pass over ``texts``: ``(N, L, D)`` every text's embedding from each layer through that layer's map,
    normalized (what ``encode`` serves a text that exits there), and ``(N, L + 1, H)`` the unmapped mean-pooled
    states the exit rule reads (index 0: the embedding output)."""
    maps = exit_maps_module(model)
    if maps is None:
        raise ValueError("this benchmark compares models with exit maps (st-leap fit-maps)")
    mapped = [None] * len(texts)
    pooled = [None] * len(texts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for idx, features, hidden in hidden_state_batches(model, texts, 32, True, "Layer states"):
                mask = features["attention_mask"]
                L = len(hidden) - 1
                by_layer = mapped_layer_embeddings(model, hidden, mask, range(1, L + 1), maps)
                embeddings = F.normalize(torch.stack([by_layer[layer] for layer in range(1, L + 1)], dim=1), dim=-1)
                states = torch.stack([mean_pool(h, mask) for h in hidden], dim=1)
                for row, i in enumerate(idx):
                    mapped[i], pooled[i] = embeddings[row].float().cpu(), states[row].float().cpu()
    finally:
        model.train(was_training)
    return torch.stack(mapped), torch.stack(pooled)


def settings_of(model: SentenceTransformer, texts: list[str], min_layer: int) -> dict[str, dict[str, Any]]:
    """Every setting's per-text embedding and exit layer, from one pass over the texts."""
    mapped, pooled = layer_states(model, texts)
    n, L, _ = mapped.shape
    rows = torch.arange(n)
    out: dict[str, dict[str, Any]] = {}
    for d in range(1, L + 1):
        out[f"static {d}"] = {"family": "static", "value": d, "layers": np.full(n, d), "embeddings": mapped[:, d - 1]}
    for theta in THETAS:
        layers = replay_exits(pooled, theta, 1, min_layer)
        out[f"exit {theta}"] = {"family": "exit", "value": theta, "layers": layers,
                                "embeddings": mapped[rows, torch.as_tensor(layers) - 1]}
    final = mapped[:, -1]
    cos = (mapped * final[:, None]).sum(-1)  # (N, L)
    for tau in TAUS:
        reached = cos >= tau
        reached[:, -1] = True
        layers = reached.float().argmax(dim=1) + 1
        out[f"oracle {tau}"] = {"family": "oracle", "value": tau, "layers": layers.numpy(),
                                "embeddings": mapped[rows, layers - 1]}
    return out


def stsb_scores(model: SentenceTransformer, min_layer: int) -> dict[str, dict[str, float]]:
    s1, s2, gold = (list(x) for x in resources.load_stsb("test"))
    texts = list(dict.fromkeys([*s1, *s2]))
    index = {t: i for i, t in enumerate(texts)}
    scores = {}
    for name, setting in settings_of(model, texts, min_layer).items():
        scores[name] = {"family": setting["family"], "value": setting["value"],
                        "mean_layers": float(np.mean(setting["layers"])),
                        "quality": pairs_spearman(setting["embeddings"].numpy(), index, s1, s2, gold)}
    return scores


def retrieval_scores(model: SentenceTransformer, task: str, reference: SentenceTransformer,
                     min_layer: int, evaluators: dict) -> dict[str, dict[str, float]]:
    evaluator = evaluators.get(task) or evaluators.setdefault(task, beir_evaluator(task, reference, [1]))
    texts = list(evaluator.ir.queries)  # the query texts, in the evaluator's order
    scores = {}
    for name, setting in settings_of(model, texts, min_layer).items():
        scores[name] = {"family": setting["family"], "value": setting["value"],
                        "mean_layers": float(np.mean(setting["layers"])),
                        "quality": 100 * fixed_query_ndcg(evaluator, setting["embeddings"])}
    return scores


def fixed_query_ndcg(evaluator, query_embeddings: torch.Tensor) -> float:
    """NDCG@k of given query embeddings (rows in ``evaluator.ir.queries`` order) against the reference's index,
    through sentence-transformers' own ``InformationRetrievalEvaluator`` scoring."""
    ir = evaluator.ir
    original = ir.embed_inputs

    def embed_inputs(model, sentences, **kwargs):
        if list(sentences) == list(ir.queries):
            return query_embeddings
        return original(model, sentences, **kwargs)

    ir.embed_inputs = embed_inputs
    try:
        results = ir.compute_all_metrics(None, corpus_embeddings=evaluator.corpus_embeddings)
    finally:
        del ir.embed_inputs
    return float(max(values["ndcg@k"][evaluator.k] for values in results.values()))


def speed(model: SentenceTransformer, original: SentenceTransformer, min_layer: int, repeats: int,
          texts: list[str] | None = None) -> list[dict]:
    """Interleaved encode timings of every static depth and exit threshold against the original at full depth,
    1 thread, batch 1 (48 texts) and 32 (256 texts), on ``texts`` (default: STS-B test sentences), shuffled."""
    texts = list(texts) if texts is not None else resources.stsb_sentences("test")
    random.Random(0).shuffle(texts)
    L = model[0].num_layers
    settings: dict[str, dict[str, Any]] = {"original full": {"exit_threshold": None}}
    settings.update({f"static {d}": {"truncate_layers": d, "exit_threshold": None} for d in range(1, L + 1)})
    settings.update({f"exit {t}": {"exit_threshold": t, "exit_min_layer": min_layer, "exit_patience": 1}
                     for t in THETAS})
    torch.set_num_threads(1)
    cells = []
    try:
        for batch_size, n in ((1, 48), (32, 256)):
            timings = time_encode(model, texts[:n], settings, batch_size=batch_size, repeats=repeats,
                                  models={"original full": original})
            cells.append({"threads": 1, "batch_size": batch_size, "texts": n,
                          "speedup": {k: v["speedup"] for k, v in timings.items()},
                          "speedup_band": {k: v["speedup_band"] for k, v in timings.items()}})
    finally:
        torch.set_num_threads(2)
    return cells


def static_at(points: list[tuple[float, float]], x: float) -> float | None:
    """The static curve (speed-up, quality), linear between measured depths, at speed-up ``x``."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return None


def compare(block: dict[str, Any], cell: dict[str, Any], num_layers: int) -> list[dict[str, Any]]:
    """Each exit setting against the static curve at its own measured speed-up (batch of ``cell``).

    Timing noise must not decide: an exit setting wins only if its quality is above the static curve at the *low*
    end of its speed-up band (25th percentile: where the static curve is at its best), and only if it exits at all
    (E[layers] below ``num_layers - 0.1``; a setting that runs full depth can only "win" by noise)."""
    statics = [(cell["speedup"][k], v["quality"]) for k, v in block.items() if v["family"] == "static"]
    rows = []
    for name, v in block.items():
        if v["family"] != "exit":
            continue
        x = cell["speedup"][name]
        low = cell.get("speedup_band", {}).get(name, [x, x])[0]
        static = static_at(statics, x)
        static_low = static_at(statics, low)
        exits = v["mean_layers"] < num_layers - 0.1
        rows.append({"setting": name, "mean_layers": v["mean_layers"], "speedup": x, "speedup_low": low,
                     "quality": v["quality"], "static_quality_at_speedup": static,
                     "static_quality_at_speedup_low": static_low,
                     "beats_static": None if static_low is None else bool(exits and v["quality"] > static_low)})
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Per-sample exit against static cuts, every layer through its exit map", "",
             "Commands: " + ", then ".join(f"`{c}`" for c in result.get("commands", [result["meta_info"]["command"]])),
             "",
             f"Exit rule from layer {result['min_layer']}, patience 1. Quality: STS-B test Spearman x 100; "
             "SciFact / NFCorpus test NDCG@10 x 100 of queries against the original's full-depth index. "
             "E[layers]: the mean exit layer. Speed-up: measured encode of STS-B test sentences, 1 thread, "
             "against the original at full depth (median of interleaved rounds).", ""]
    for model_name, block in result["models"].items():
        lines += [f"## {model_name} (`{block['path']}`)", ""]
        tasks = list(block["tasks"])
        lines += ["| setting | E[layers] | " + " | ".join(tasks) + " | speed-up b1 | speed-up b32 |",
                  "| --- | ---: |" + " ---: |" * (len(tasks) + 2)]
        first = block["tasks"][tasks[0]]
        for name in first:
            cells = [f"{block['tasks'][t][name]['quality']:.2f}" for t in tasks]
            layers = " / ".join(f"{block['tasks'][t][name]['mean_layers']:.2f}" for t in tasks)
            sp = [f"{c['speedup'][name]:.2f}x" if name in c["speedup"] else "-" for c in block.get("speed", [])]
            sp += ["-"] * (2 - len(sp))
            lines.append(f"| {name} | {layers} | " + " | ".join(cells) + f" | {sp[0]} | {sp[1]} |")
        lines.append("")
        verdicts = {"stsb": block.get("verdict") or {}, **block.get("query_verdict", {})}
        for task, by_batch in verdicts.items():
            if not by_batch:
                continue
            timed = "STS-B test sentences" if task == "stsb" else f"{task} test queries"
            lines += [f"Per-sample exit against the static curve at equal measured speed-up, {task} (timed on {timed}):",
                      ""]
            for batch, rows in by_batch.items():
                wins = [f"{r['setting']}: {r['quality']:.2f} against {r['static_quality_at_speedup_low']:.2f}"
                        for r in rows if r["beats_static"]]
                lines.append(f"- batch {batch}: {len(wins)} of {len(rows)} exit settings above the static curve at "
                             "the low end of their speed-up band" + (f" ({'; '.join(wins)})" if wins else ""))
            lines.append("")
        lines.append("Oracle (not servable) against static at equal E[layers]: "
                     + "; ".join(f"{t}: {oracle_gap(block['tasks'][t]):+.2f}" for t in tasks)
                     + " (mean over oracle settings of oracle minus the static curve at its E[layers]; "
                     "positive: mixing depths could pay with a better rule)")
        lines.append("")
    return "\n".join(lines) + "\n"


def oracle_gap(task_block: dict[str, Any]) -> float:
    statics = [(v["mean_layers"], v["quality"]) for v in task_block.values() if v["family"] == "static"]
    gaps = []
    for v in task_block.values():
        if v["family"] == "oracle":
            y = static_at(statics, v["mean_layers"])
            if y is not None:
                gaps.append(v["quality"] - y)
    return float(np.mean(gaps)) if gaps else float("nan")


def plot(result: dict[str, Any], path: Path) -> None:
    from st_leap.reporting import pyplot, save_figure

    plt = pyplot()
    models = list(result["models"])
    tasks = list(result["models"][models[0]]["tasks"])
    fig, axes = plt.subplots(len(models), len(tasks), figsize=(4.8 * len(tasks), 3.8 * len(models)), squeeze=False)
    for row, model_name in enumerate(models):
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            block = result["models"][model_name]["tasks"][task]
            for family, style in (("static", "o-"), ("exit", "s--"), ("oracle", "^:")):
                points = sorted((v["mean_layers"], v["quality"]) for v in block.values() if v["family"] == family)
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=family)
            ax.set_title(f"{model_name}: {task}", fontsize=9)
            ax.set_xlabel("E[layers]")
            ax.set_ylabel("quality x 100")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", action="append", default=[], help="NAME=PATH of a model with exit maps")
    parser.add_argument("--original", default="minilm")
    parser.add_argument("--tasks", default="stsb,scifact,nfcorpus")
    parser.add_argument("--min-layer", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--render", action="store_true", help="only recompute the verdicts and rewrite md/png from --out's JSON")
    parser.add_argument("--query-speed", action="store_true",
                        help="time each retrieval task's own queries for the models in --out's JSON, and judge there")
    parser.add_argument("--out", default=str(results_dir("pareto") / "maps"))
    args = parser.parse_args(argv)
    command = command_line("benchmarks.pareto.maps", argv)
    if not args.models and not (args.render or args.query_speed):
        parser.error("--models NAME=PATH is required (once per model), except with --render or --query-speed")
    if args.query_speed:
        result = json.loads(Path(args.out).with_suffix(".json").read_text())
        result.setdefault("commands", [result["meta_info"]["command"]]).append(command)
        original_path = resources.resolve_model(args.original)
        reference = SentenceTransformer(original_path, device="cpu")
        original = st_leap.from_pretrained(original_path, device="cpu")
        evaluators: dict = {}
        for block in result["models"].values():
            model = st_leap.load(block["path"], device="cpu")
            L = model[0].num_layers
            block["query_speed"], block["query_verdict"] = {}, {}
            for task in [t for t in block["tasks"] if t != "stsb"]:
                evaluator = evaluators.get(task) or evaluators.setdefault(task, beir_evaluator(task, reference, [1]))
                cells = speed(model, original, result["min_layer"], args.repeats, list(evaluator.ir.queries))
                block["query_speed"][task] = cells
                block["query_verdict"][task] = {c["batch_size"]: compare(block["tasks"][task], c, L) for c in cells}
                write_result(args.out, result, markdown(result))
        return 0
    if args.render:
        result = json.loads(Path(args.out).with_suffix(".json").read_text())
        for block in result["models"].values():
            if block.get("speed") and "stsb" in block["tasks"]:
                L = max(int(k.split()[1]) for k in block["tasks"]["stsb"] if k.startswith("static "))
                block["verdict"] = {c["batch_size"]: compare(block["tasks"]["stsb"], c, L) for c in block["speed"]}
        write_result(args.out, result, markdown(result))
        write_plot(plot, result, args.out)
        return 0
    torch.set_num_threads(2)
    original_path = resources.resolve_model(args.original)
    reference = SentenceTransformer(original_path, device="cpu")
    result: dict[str, Any] = {"original": original_path, "min_layer": args.min_layer, "thetas": THETAS,
                              "taus": TAUS, "models": {}, "meta_info": meta_info(command)}
    evaluators: dict = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        model = st_leap.load(path, device="cpu")
        block: dict[str, Any] = {"path": path, "tasks": {}}
        result["models"][name] = block
        for task in args.tasks.split(","):
            if task == "stsb":
                block["tasks"][task] = stsb_scores(model, args.min_layer)
            else:
                block["tasks"][task] = retrieval_scores(model, task, reference, args.min_layer, evaluators)
            write_result(args.out, result, markdown(result))
        if not args.no_speed:
            original = st_leap.from_pretrained(original_path, device="cpu")
            block["speed"] = speed(model, original, args.min_layer, args.repeats)
            if "stsb" in block["tasks"]:
                L = model[0].num_layers
                block["verdict"] = {c["batch_size"]: compare(block["tasks"]["stsb"], c, L) for c in block["speed"]}
            write_result(args.out, result, markdown(result))
    write_plot(plot, result, args.out)
    print(f"wrote {Path(args.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
