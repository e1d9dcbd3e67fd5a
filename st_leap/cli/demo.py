"""``st-leap demo``: end to end on the packaged all-MiniLM-L6-v2: diagnose, a bounded LEAP retrofit, a
before/after table of exit rate, E[layers], STS-B and measured speed-up, and search with an index you keep: a
shallow query encoder trained on the index's own documents (the shared SciFact copy), against the original's
full-depth queries."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from st_leap.cli.common import plot_if_possible, positive_int, thresholds


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="End to end on the packaged all-MiniLM-L6-v2: diagnose, a bounded LEAP retrofit, before/after table, "
        "a query encoder for a kept index.",
        description="1) diagnose the original model, 2) a bounded LEAP retrofit (LEAPLoss, frozen original as "
        "teacher), 3) exit rate, E[layers], STS-B test Spearman and measured encode speed-up before and after, "
        "4) search with an index you keep: a 3-layer query encoder trained on the index's documents (SciFact), "
        "its test NDCG@10 and measured query speed-up against the original's full-depth queries.",
    )
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="st_leap_demo", help="Output folder (default: %(default)s)")
    parser.add_argument("--train-steps", type=int, default=400, help="LEAP retrofit steps of batch 32; 0 skips training (default: %(default)s)")
    parser.add_argument("--thresholds", type=thresholds, default=[0.90, 0.93, 0.95], help="Thetas of the table (default: 0.90,0.93,0.95)")
    parser.add_argument("--timing-sentences", type=positive_int, default=512, help="Sentences per timed encode (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="Interleaved timing rounds (default: %(default)s)")
    parser.add_argument("--search-steps", type=int, default=SEARCH_STEPS,
                        help="Steps of batch 64 for the query encoder of step 4; 0 skips step 4 (default: %(default)s)")
    parser.add_argument("--search-corpus", default=None,
                        help="A BEIR folder with test queries and qrels (default: the shared SciFact copy)")
    return parser


#: The demo's query-encoder budget (steps of batch 64). With the index model's pass over SciFact's documents and over
#: the training texts, step 4 takes the minutes that ``benchmarks/results/demo/demo_run.md`` reports.
SEARCH_STEPS = 150


def demo_config(model_path: str, output_dir: str, max_steps: int, **overrides: Any) -> Any:
    """The demo's retrofit: the frozen original as precomputed teacher, ``max_steps`` steps of batch 32 (lr 3e-4,
    10% warm-up, length-grouped batches), the recipe's LEAPLoss with the teacher as the only target
    (``student_weight=0``; the best 300-step probe, ``benchmarks/results/train_recipe/train_recipe_probes.md``), exit
    defaults theta=0.95, l_min=3, no checkpoints (``save_steps=None``: a run of minutes needs no 0.27 GB
    checkpoints). ``overrides`` are :class:`~st_leap.training.TrainConfig` fields."""
    from st_leap.training import TrainConfig

    settings: dict[str, Any] = {
        "learning_rate": 3e-4,
        "loss": {"student_weight": 0.0},
        "warmup_steps": max(1, max_steps // 10),
        "group_by_length": True,
        "save_steps": None,
    }
    settings.update(overrides)
    return TrainConfig(
        model=model_path, teacher=model_path, teacher_mode="precomputed", output_dir=output_dir, max_steps=max_steps,
        **settings,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from st_leap import diagnose, from_pretrained, reporting, resources
    from st_leap.evaluation.sweep import timed_operating_points

    grid = [t for t in args.thresholds if t is not None]
    out = Path(args.out)
    model_path = resources.resolve_model(args.model)
    sentences = resources.stsb_sentences("test")
    steps = (3 if args.train_steps > 0 else 2) + (args.search_steps > 0)
    search_data = None
    if args.search_steps > 0:  # a bad search folder fails here, before any model loads
        from st_leap.evaluation.user_data import read_beir

        search_folder = Path(args.search_corpus) if args.search_corpus else resources.beir_dir("scifact")
        search_data = read_beir(search_folder)
    clock = _Clock()
    print(f"[1/{steps}] diagnose {model_path} on the {len(sentences)} STS-B test sentences")
    models = {"original": from_pretrained(model_path)}
    report: dict[str, Any] = {"model_path": model_path, "diagnose": {"original": diagnose(models["original"], sentences)}}
    print(reporting.diagnose_report(report["diagnose"]["original"], "original model"))
    plot_if_possible(reporting.plot_diagnose, report["diagnose"]["original"], out / "original_diagnose.png", title="original model")

    if args.train_steps > 0:
        from st_leap.training import train

        clock.lap("diagnose")
        print(f"\n[2/{steps}] LEAP retrofit: {args.train_steps} steps of batch 32, frozen original as teacher")
        models["LEAP"] = train(demo_config(model_path, str(out / "leap-model"), args.train_steps)).model
        report["diagnose"]["LEAP"] = diagnose(models["LEAP"], sentences)
        print(reporting.diagnose_report(report["diagnose"]["LEAP"], "LEAP model"))
        plot_if_possible(reporting.plot_diagnose, report["diagnose"]["LEAP"], out / "leap_diagnose.png", title="LEAP model")

    clock.lap("LEAP retrofit" if args.train_steps > 0 else "diagnose")
    table_step = 3 if args.train_steps > 0 else 2
    print(f"\n[{table_step}/{steps}] before/after: STS-B test Spearman; speed-up measured on {args.timing_sentences} sentences, "
          f"batch 32, {torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds "
          f"(k=1, l_min={models['original'][0].exit_min_layer})")
    report["table"] = {
        name: timed_operating_points(model, sentences[: args.timing_sentences], grid, args.repeats)
        for name, model in models.items()
    }
    print(reporting.operating_points_table(report["table"]))
    clock.lap("before/after table")
    if args.search_steps > 0:
        print(f"\n[{steps}/{steps}] search with an index you keep: a 3-layer query encoder trained "
              f"{args.search_steps} steps on the index's own documents (no queries, no labels)")
        report["search"] = search_step(model_path, search_folder, search_data, args.search_steps, out, args.repeats)
        print(search_table(report["search"]))
        clock.lap("search")
    report["minutes"] = clock.minutes
    print("\nminutes: " + ", ".join(f"{name} {m:.1f}" for name, m in clock.minutes.items())
          + f"; total {sum(clock.minutes.values()):.1f}")
    reporting.write_json(report, out / "demo.json")
    print(f"\nwrote {out}/demo.json, the diagnose plots" + (f", the LEAP model in {out}/leap-model" if args.train_steps else "")
          + (f", the query encoder in {out}/query-encoder" if args.search_steps > 0 else ""))
    print(NEXT_STEPS.format(model=f"{out}/leap-model" if args.train_steps else model_path))
    return 0


class _Clock:
    """Wall-clock minutes of each demo step, for the closing line and ``demo.json``."""

    def __init__(self) -> None:
        import time

        self._time = time.perf_counter
        self._last = self._time()
        self.minutes: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._time()
        self.minutes[name] = self.minutes.get(name, 0.0) + (now - self._last) / 60
        self._last = now


def search_step(model_path: str, folder: Path, data: Any, max_steps: int, out: Path, repeats: int) -> dict[str, Any]:
    """Train a 3-layer query encoder for the index ``model_path`` built of the BEIR ``folder`` (``data``, its
    :func:`~st_leap.evaluation.user_data.read_beir`), then score its test queries against that index (the original
    at full depth, the original cut at 3, the trained encoder) and time query encoding at batch 1 against the
    original at full depth."""
    from sentence_transformers import SentenceTransformer

    import st_leap
    from st_leap.backends import query_side
    from st_leap.corpus import read_corpus
    from st_leap.diagnostics import time_encode
    from st_leap.evaluation import QueryDepthEvaluator
    from st_leap.model import num_layers
    from st_leap.query_encoder import fit_query_encoder
    from st_leap.teacher import index_embeddings

    documents = read_corpus(folder)  # the test queries and qrels in ``data`` are scored here, never trained on
    fitted = fit_query_encoder(model_path, folder, out / "query-encoder", depth=3, max_steps=max_steps,
                               eval_steps=None, map_texts=min(20_000, 64 * max_steps))
    encoder = query_side(st_leap.load(fitted.path))
    original = st_leap.from_pretrained(model_path)
    index = SentenceTransformer(model_path)  # as fit_query_encoder loads it: its document pass comes from the cache
    evaluator = QueryDepthEvaluator(
        data.queries, dict(zip(documents.ids, documents.documents)),
        {q: {d for d, s in docs.items() if s > 0} for q, docs in data.qrels.items()}, reference=index,
        corpus_embeddings=index_embeddings(index, documents.documents), depths=[3], name="test",
    )
    cut = evaluator(original)["test_depth3_ndcg@10"]
    trained = evaluator(encoder)["test_depth3_ndcg@10"]
    queries = list(data.queries.values())[:64]
    timings = time_encode(original, queries, {"full": {"exit_threshold": None}, "cut": {"truncate_layers": 3},
                                              "trained": {}}, batch_size=1, repeats=repeats,
                          models={"trained": encoder}, show_progress_bar=False)
    return {
        "corpus": str(folder), "model": fitted.path, "steps": fitted.steps, "train_minutes": fitted.train_seconds / 60,
        "index_minutes": fitted.index_seconds / 60, "dev": fitted.dev,
        "rows": [
            {"query encoder": "original, full depth", "layers": num_layers(original), "ndcg@10": evaluator.reference_ndcg,
             "speedup": 1.0},
            {"query encoder": "original, cut", "layers": 3, "ndcg@10": cut, "speedup": timings["cut"]["speedup"]},
            {"query encoder": "trained on the documents", "layers": 3, "ndcg@10": trained,
             "speedup": timings["trained"]["speedup"]},
        ],
    }


def search_table(search: dict[str, Any]) -> str:
    """The demo's search rows as text: test NDCG@10 against the kept index and measured query speed-up."""
    lines = [f"{'query encoder':<28} {'layers':>6} {'NDCG@10':>8} {'speed-up (batch 1)':>19}"]
    for row in search["rows"]:
        lines.append(f"{row['query encoder']:<28} {row['layers']:>6} {100 * row['ndcg@10']:>8.2f} "
                     f"{row['speedup']:>18.2f}x")
    lines.append(f"index: {search['corpus']} (documents by the original at full depth); training "
                 f"{search['train_minutes']:.1f} min, index pass {search['index_minutes']:.1f} min; model: {search['model']}")
    return "\n".join(lines)


NEXT_STEPS = """
Next, on your own data (MODEL: {model}, or your own model folder or Hub id):
  st-leap calibrate MODEL --texts your_texts.txt --max-quality-drop 1         # pick exit or static depth on your texts
  st-leap calibrate MODEL --beir your_beir_folder --max-quality-drop 1        # the same, judged by retrieval
  st-leap fit-maps MODEL --texts your_texts.txt --out DIR                     # fit exit maps on your texts
  st-leap export MODEL --backend onnx --quantize int8                         # the fastest full-depth CPU path
  st-leap fit-query-encoder MODEL --corpus your_documents --depth 3 --out DIR # queries for an index you keep
What to use for your case, and what each option measured: README.md, "What to use for your case"."""
