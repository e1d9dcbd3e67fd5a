"""Keep the index, adapt the queries to it: query encoders fitted or trained on the index's own documents.

For each BEIR set (SciFact, NFCorpus), documents embedded once by the original at full depth (the index), queries at
each static depth through:

- ``original, cut``: the stock model cut at depth d, no map;
- ``generic maps``: closed-form exit maps fitted on 20,000 generic query-like sentences (what ``st-leap fit-maps``
  does without ``--corpus``);
- ``corpus maps``: the same closed-form fit on 20,000 query-like texts of the corpus's training documents
  (``st_leap.corpus.query_texts``; titles, sentences, short spans; the dev documents left out);
- ``--encoder TASK:NAME=PATH``: trained query encoders (``st-leap fit-query-encoder``), at their depths.

Phases: ``maps`` (fit and save the map models), ``eval`` (dev = the corpus's held-out documents,
``st_leap.evaluation.dev.corpus_depth_evaluator``; test = the BEIR test queries, scored here only), ``stsb``
(STS-B test Spearman of every encoder), ``speed`` (query encode speed-up over the original at full depth, torch
fp32, each task's test queries, 1 and 2 threads, batch 1 and 32, interleaved rounds). The original's document
embeddings are computed once into the shared cache (``st_leap.teacher.index_embeddings``).

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.query.corpus --phases maps,eval

Writes ``benchmarks/results/query/corpus.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_plot, write_result
from st_leap import resources
from st_leap.corpus import QUERY_KINDS, query_texts, read_corpus, split_documents
from st_leap.diagnostics import time_encode
from st_leap.evaluation import QueryDepthEvaluator
from st_leap.evaluation.dev import corpus_depth_evaluator
from st_leap.evaluation.sweep import stsb_spearman
from st_leap.evaluation.user_data import read_beir
from st_leap.exit_maps import fit_exit_maps
from st_leap.model import num_layers
from st_leap.reporting import save_model
from st_leap.teacher import index_embeddings

TASKS = ("scifact", "nfcorpus")
DEV_DOCUMENTS = 200
SEED = 12345


def test_evaluator(task: str, reference: SentenceTransformer, depths: list[int]) -> QueryDepthEvaluator:
    """The BEIR test queries of ``task`` against the original's full-depth document embeddings (shared cache)."""
    data = read_beir(resources.beir_dir(task))
    relevant = {q: {d for d, s in docs.items() if s > 0} for q, docs in data.qrels.items()}
    corpus = read_corpus(resources.beir_dir(task))
    return QueryDepthEvaluator(
        data.queries, dict(zip(corpus.ids, corpus.documents)), relevant, reference=reference,
        corpus_embeddings=index_embeddings(reference, corpus.documents), depths=depths, name=task, batch_size=32,
    )


def scores(evaluator: QueryDepthEvaluator, model: SentenceTransformer, depths: list[int]) -> dict[str, Any]:
    evaluator.depths = depths
    metrics = evaluator(model)
    prefix = f"{evaluator.name}_" if evaluator.name else ""
    return {
        "ndcg@10": {d: metrics[f"{prefix}depth{d}_ndcg@10"] for d in depths},
        "cosine": {d: metrics[f"{prefix}depth{d}_cosine"] for d in depths},
    }


def build_maps(original_path: str, save_dir: Path, n: int, result: dict[str, Any], tasks: tuple[str, ...] = TASKS,
               kinds: tuple[str, ...] = QUERY_KINDS) -> None:
    """Fit and save the generic-map model and one corpus-map model per task (``maps_<task>``). With other ``kinds``
    of corpus texts than the default: only the corpus maps, saved as ``maps_<task>_<kind+kind>``."""
    target = SentenceTransformer(original_path, device="cpu")
    default = tuple(kinds) == QUERY_KINDS
    jobs = {"generic": resources.query_sentences(n, seed=SEED, held_out_documents=2000)} if default else {}
    for task in tasks:
        corpus = read_corpus(resources.beir_dir(task))
        train, _ = split_documents(corpus, DEV_DOCUMENTS, seed=SEED)
        name = task if default else f"{task}_{'+'.join(kinds)}"
        jobs[name] = query_texts(corpus, train, kinds=kinds, max_texts=n, seed=SEED)[0]
    for name, texts in jobs.items():
        model = st_leap.from_pretrained(original_path, device="cpu")
        start = time.perf_counter()
        fit = fit_exit_maps(model, texts, target=target)
        result.setdefault("fits", {})[name] = {**fit.to_dict(), "seconds": time.perf_counter() - start}
        save_model(model, save_dir / f"maps_{name}")


def encoders_for(task: str, original_path: str, save_dir: Path, extra: list[str],
                 only: list[str] | None = None) -> dict[str, SentenceTransformer]:
    """The query encoders of ``task`` by name, loading only those in ``only`` when it is given."""
    paths: dict[str, Any] = {
        "original, cut": None,
        "generic maps": save_dir / "maps_generic",
        "corpus maps": save_dir / f"maps_{task}",
    }
    for spec in extra:
        where, _, path = spec.partition("=")
        spec_task, _, name = where.partition(":")
        if spec_task == task:
            paths[name] = path
    return {
        name: st_leap.from_pretrained(original_path, device="cpu") if path is None else st_leap.load(str(path), device="cpu")
        for name, path in paths.items() if not only or name in only
    }


def query_model(model: SentenceTransformer) -> SentenceTransformer:
    """The query side of a saved query encoder (its ``Router``'s query route), else the model itself."""
    from st_leap.backends import query_side

    return query_side(model)


def int8_phase(specs: list[str], original_path: str, save_dir: Path, reference: SentenceTransformer, repeats: int,
               result: dict[str, Any], save: Any) -> None:
    """Each ``TASK:NAME=MODEL_DIR``: its query side exported as one ONNX Runtime int8 graph (``st_leap.backends.export``),
    test NDCG@10 of the graph and of the fp32 query side, and query speed at batch 1 and 32 (1 and 2 threads) of
    both against stock torch fp32 at full depth and the original's whole-graph int8, in the same rounds; each graph
    that ``st-leap serve`` would run on its lean path (one graph a route) is also timed on that path (``LeanPath``)."""
    from benchmarks.backends.run import stock_model
    from st_leap.backends import export

    for spec in specs:
        where, _, path = spec.partition("=")
        task, _, name = where.partition(":")
        fp32 = query_model(st_leap.load(path, device="cpu"))
        folder = save_dir / "int8" / f"{task}_{name.replace(' ', '_')}"
        depth = getattr(fp32[0], "truncate_layers", None) or num_layers(fp32)
        # the query side alone, as a plain model: plain ``encode`` (what time_encode calls) runs the query graph;
        # exported every time (seconds): export clears a graph an earlier model of the same name left in the folder
        export(fp32, folder, "onnx", quantize="int8", depth=depth)
        evaluator = test_evaluator(task, reference, None)
        # a new row: nothing an earlier graph of the same name measured is kept (its int8 NDCG was, once)
        row = result.setdefault("int8", {}).setdefault(task, {})[name] = {}
        row["path"], row["export"] = path, str(folder)
        row["ndcg@10_fp32"] = evaluator.ndcg(fp32)
        texts = list(read_beir(resources.beir_dir(task)).queries.values())
        row["speed"] = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            graph = st_leap.load(str(folder))  # its runtime takes torch's thread count when it opens
            if "ndcg@10_int8" not in row:
                row["ndcg@10_int8"] = evaluator.ndcg(graph)
            peer = whole_graph_peer(original_path, save_dir / "int8", threads)
            models = {
                "st torch fp32 full": stock_model(original_path),
                "whole-graph onnx-int8 full": peer,
                f"{name} fp32": fp32,
                f"{name} onnx-int8": graph,
            }
            # the same graphs on the path `st-leap serve` runs them (tokenizer, one graph call), where one exists
            for label, model in (("whole-graph onnx-int8 full", peer), (f"{name} onnx-int8", graph)):
                lean = LeanPath.of(model, texts[:8])
                if lean is not None:
                    models[f"{label}, served path"] = lean
            settings = dict.fromkeys(models, {})
            for batch_size, n in ((1, 64), (32, 256)):
                timings = time_encode(models["st torch fp32 full"], texts[:n], settings, batch_size=batch_size,
                                      repeats=repeats, models=models)
                row["speed"].append({"threads": threads, "batch_size": batch_size, "texts": n, "timings": timings})
                save()
        torch.set_num_threads(2)


class LeanPath:
    """An exported graph's route encoded as ``st-leap serve`` encodes it (``st_leap.serving.lean_encode``: the
    tokenizer, then one graph call per batch), timed by ``time_encode`` as if it were a model."""

    device = torch.device("cpu")  # time_encode times a CPU call with perf_counter

    def __init__(self, module: Any) -> None:
        self.module = module

    @classmethod
    def of(cls, model: SentenceTransformer, check: list[str]) -> LeanPath | None:
        """The served path of ``model``'s default route, or ``None`` when the server would not take it (not one
        graph); it must give ``encode``'s embeddings on ``check`` (within 1e-6), else a ``RuntimeError``."""
        from st_leap.serving import lean_encode, lean_module

        module = lean_module(model, "default")
        if module is None:
            return None
        for batch_size in (1, 4):
            gap = abs(lean_encode(module, check, batch_size=batch_size) - model.encode(check, batch_size=batch_size)).max()
            if gap > 1e-6:
                raise RuntimeError(f"the served path differs from encode by {gap:.2e} at batch {batch_size}")
        return cls(module)

    def encode(self, sentences: list[str], batch_size: int = 32, **_: Any) -> Any:
        from st_leap.serving import lean_encode

        return lean_encode(self.module, sentences, batch_size=batch_size)

    def __getitem__(self, index: int) -> Any:  # time_encode reads the first module's exit statistics
        return self.module


def whole_graph_peer(original_path: str, save_dir: Path, threads: int) -> SentenceTransformer:
    """The original at full depth as one int8 graph: for a BERT, sentence-transformers' own ONNX path
    (``benchmarks.backends.run.whole_graph_model``); for other architectures (MPNet), st_leap's export of the whole
    model (its int8 settings for that architecture, ``st_leap.backends.INT8_FP32_NODES``), made once."""
    from benchmarks.backends.run import whole_graph_model
    from st_leap.backends import export

    if SentenceTransformer(original_path, device="cpu")[0].auto_model.config.model_type == "bert":
        return whole_graph_model(original_path, save_dir / "whole_graph", "onnx", "int8", threads)
    folder = save_dir / f"whole_graph_{Path(original_path).name}"
    if not (folder / "st_leap_export.json").exists():
        export(st_leap.from_pretrained(original_path, device="cpu"), folder, "onnx", quantize="int8")
    return st_leap.load(str(folder))  # its runtime takes torch's thread count when it opens


def _speedup_rows(cell: dict[str, Any], prefix: str, reference: str) -> list[str]:
    """One table row per timed setting of ``cell`` but the reference: ``prefix`` (with ``{name}``), then the
    median speed-up and its 25th-75th band."""
    rows = []
    for name, timing in cell["timings"].items():
        if name != reference:
            band = timing["speedup_band"]
            rows.append(prefix.format(name=name) + f" {timing['speedup']:.2f}x ({band[0]:.2f}-{band[1]:.2f}) |")
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Queries adapted to the index's own documents", "", "Commands:", ""]
    lines += [f"    {c}" for c in result.get("commands", [result["meta_info"]["command"]])] + [""]
    for task in TASKS:
        block = result.get("tasks", {}).get(task)
        if not block:
            continue
        depths = result["depths"]
        head = "| query encoder | " + " | ".join(f"depth {d}" for d in depths) + " |"
        rule = "| --- |" + " ---: |" * len(depths)
        for split, title in (("test", "test queries"), ("dev", "dev (held-out documents' texts, corpus only)")):
            if split not in block:
                continue
            reference = block[split]["reference"]
            lines += [f"## {task}, {title}: NDCG@10 x 100 against the original's index (original at full depth: "
                      f"{100 * reference:.2f})", "", head, rule]
            for name, row in block[split]["encoders"].items():
                cells = [f"{100 * row['ndcg@10'][d]:.2f}" if d in row["ndcg@10"] else "" for d in depths]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    if result.get("stsb"):
        lines += ["## STS-B test Spearman x 100 per depth", "", "| task | query encoder | depths |", "| --- | --- | --- |"]
        for task, rows in result["stsb"].items():
            for name, row in rows.items():
                lines.append(f"| {task} | {name} | " + ", ".join(f"{d}: {100 * v:.2f}" for d, v in row.items()) + " |")
        lines.append("")
    if result.get("speed"):
        lines += ["## Query encode speed-up over the original at full depth (torch fp32, median of interleaved "
                  "rounds, 25th-75th band)", "", "| task | encoder | threads | batch | speed-up |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for cell in result["speed"]:
            lines += _speedup_rows(cell, f"| {cell['task']} | {{name}} | {cell['threads']} | {cell['batch_size']} |", "full")
        lines.append("")
    for task, rows in result.get("int8", {}).items():
        for name, row in rows.items():
            lines += [f"## {task}, {name}: the query side as one ONNX Runtime int8 graph", "",
                      f"Test NDCG@10 x 100: fp32 {100 * row['ndcg@10_fp32']:.2f}, int8 {100 * row['ndcg@10_int8']:.2f}.",
                      "", "| threads | batch | setting | speed-up over st torch fp32 full (25th-75th) |",
                      "| ---: | ---: | --- | ---: |"]
            for cell in row["speed"]:
                lines += _speedup_rows(cell, f"| {cell['threads']} | {cell['batch_size']} | {{name}} |", "st torch fp32 full")
            if any(key.endswith(", served path") for cell in row["speed"] for key in cell["timings"]):
                lines += ["", "*served path*: the same graph encoded as `st-leap serve` encodes it "
                          "(`st_leap.serving.lean_encode`: the tokenizer to numpy, then one graph call a batch; the "
                          "same embeddings as `encode`, checked before timing); the other rows go through "
                          "`SentenceTransformer.encode`."]
            lines.append("")
    if result.get("fits"):
        lines += ["## Closed-form maps fitted", ""]
        for name, fit in result["fits"].items():
            lines.append(f"- {name}: {fit['num_texts']} texts, {fit['seconds']:.0f} s")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    from st_leap.reporting import pyplot, save_figure

    plt = pyplot()
    tasks = [t for t in TASKS if "test" in result.get("tasks", {}).get(t, {})]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        block = result["tasks"][task]["test"]
        for name, row in block["encoders"].items():
            depths = sorted(int(d) for d in row["ndcg@10"])
            ax.plot(depths, [100 * row["ndcg@10"][d] for d in depths], marker="o", label=name)
        ax.axhline(100 * block["reference"], color="black", linestyle="--", label="original, full depth")
        ax.set_title(f"{task}: test queries at depth d, original's index")
        ax.set_xlabel("query depth (layers)")
        ax.set_ylabel("NDCG@10 x 100")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


def _int_keys(result: dict[str, Any]) -> None:
    for block in result.get("tasks", {}).values():
        for split in block.values():
            for row in split["encoders"].values():
                for key in ("ndcg@10", "cosine"):
                    row[key] = {int(d): v for d, v in row[key].items()}
    for rows in result.get("stsb", {}).values():
        for name in rows:
            rows[name] = {int(d): v for d, v in rows[name].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", default="minilm")
    parser.add_argument("--map-texts", type=int, default=20000)
    parser.add_argument("--map-kinds", default=",".join(QUERY_KINDS),
                        help="Kinds of corpus texts the corpus maps are fitted on (maps phase); other than the default, "
                        "only the corpus maps are fitted, saved as maps_<task>_<kinds>")
    parser.add_argument("--phases", default="maps,eval")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--encoder", action="append", default=[], help="TASK:NAME=PATH, a trained query encoder")
    parser.add_argument("--only", action="append", default=[], help="evaluate only these encoder names")
    parser.add_argument("--int8", action="append", default=[],
                        help="TASK:NAME=MODEL_DIR, a trained query encoder to export as one int8 graph (int8 phase)")
    parser.add_argument("--save-dir", default="runs/query/corpus")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(results_dir("query") / "corpus"))
    args = parser.parse_args(argv)
    command = command_line("benchmarks.query.corpus", argv)
    phases = set(args.phases.split(","))
    tasks = args.tasks.split(",")
    torch.set_num_threads(2)
    original_path = resources.resolve_model(args.original)
    save_dir = Path(args.save_dir)
    result: dict[str, Any] = {"original": original_path, "depths": [1, 2, 3, 4, 5, 6], "meta_info": meta_info(command)}
    earlier = Path(args.out).with_suffix(".json")
    if earlier.exists():  # phases and encoders add to what earlier runs measured
        kept = json.loads(earlier.read_text())
        _int_keys(kept)
        result = {**kept, "meta_info": result["meta_info"]}
        # each command once, where it last ran (a rerun replaces the rows it wrote)
        result["commands"] = [*(c for c in kept.get("commands", [kept["meta_info"]["command"]]) if c != command),
                              command]

    def save() -> None:
        write_result(args.out, result, markdown(result))

    if "maps" in phases:
        build_maps(original_path, save_dir, args.map_texts, result, tuple(tasks), tuple(args.map_kinds.split(",")))
        save()
    reference = SentenceTransformer(original_path, device="cpu")
    if "eval" in phases:
        for task in tasks:
            encoders = encoders_for(task, original_path, save_dir, args.encoder, args.only)
            block = result.setdefault("tasks", {}).setdefault(task, {})
            evaluators = {
                "dev": corpus_depth_evaluator(resources.beir_dir(task), reference, None, dev_documents=DEV_DOCUMENTS,
                                              seed=SEED, batch_size=32),
                "test": test_evaluator(task, reference, None),
            }
            for split, evaluator in evaluators.items():
                part = block.setdefault(split, {"encoders": {}})
                part["reference"] = evaluator.reference_ndcg
                for name, model in encoders.items():
                    query = query_model(model)
                    depths = list(range(1, num_layers(query) + 1))
                    part["encoders"][name] = scores(evaluator, query, depths)
                    save()
    if "stsb" in phases:
        for task in tasks:
            encoders = encoders_for(task, original_path, save_dir, args.encoder, args.only)
            rows = result.setdefault("stsb", {}).setdefault(task, {})
            for name, model in encoders.items():
                query = query_model(model)
                rows[name] = {d: stsb_spearman(query, "test", truncate_layers=d, exit_threshold=None)
                              for d in range(1, num_layers(query) + 1)}
                save()
    if "speed" in phases:
        result["speed"] = []
        for task in tasks:
            texts = list(read_beir(resources.beir_dir(task)).queries.values())
            encoders = encoders_for(task, original_path, save_dir, args.encoder)
            timed = {name: query_model(model) for name, model in encoders.items()
                     if name in (args.only or [n for n in encoders if n not in ("original, cut", "generic maps")])}
            settings = {"full": {"exit_threshold": None}}
            models = {"full": encoders["original, cut"]}
            for name, model in timed.items():
                settings[name] = {"exit_threshold": None}
                models[name] = model
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for batch_size, n in ((1, 64), (32, 256)):
                    timings = time_encode(models["full"], texts[:n], settings, batch_size=batch_size,
                                          repeats=args.repeats, models=models)
                    result["speed"].append({"task": task, "threads": threads, "batch_size": batch_size, "texts": n,
                                            "timings": timings})
                    save()
        torch.set_num_threads(2)
    if "int8" in phases:
        int8_phase(args.int8, original_path, save_dir, reference, args.repeats, result, save)
    save()
    write_plot(plot, result, args.out)
    print(f"wrote {Path(args.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
