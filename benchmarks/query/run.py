"""Keep the index, make queries shallower: queries at each depth against documents embedded by the original model.

Query encoders compared, each at every static depth 1..L (``truncate_layers``):

- ``original``: the stock model cut (the original's own queries at full depth are the reference);
- ``original + maps``: the same, through exit maps fitted in closed form into the original's final space
  (``st_leap.exit_maps.fit_exit_maps``; held-out query-like sentences, none of them training or dev texts);
- ``retrofit``: the query-side retrofit trained with ``benchmarks/query/recipe.json`` (``--model``);
- ``retrofit + maps``: the retrofit through maps fitted into the original's final space (every layer, the last too).

Phases (each writes its part of the result, so a stopped run keeps what it measured):

1. ``dev``: the held-out cloze retrieval split of the recipe (``cloze_retrieval_dev``, never a BEIR set), NDCG@10 and
   cosine to the original's query embeddings per depth (:class:`~st_leap.evaluation.QueryDepthEvaluator`). The
   serving depth of each encoder is chosen here only: the shallowest depth whose dev NDCG@10 is within
   ``--dev-budget`` points of the original's.
2. ``test``: SciFact and NFCorpus test queries at every depth against the original's full-depth document
   embeddings (NDCG@10 x 100), and STS-B test Spearman per depth.
3. ``int8``: the mapped retrofit (else the mapped original) at its dev-chosen depth exported as one whole
   ONNX Runtime int8 graph (``st_leap.backends.export``), scored on the same test queries (its speed:
   ``benchmarks.backends.export`` on the saved encoder, see ``--save-dir``).
4. ``speed``: query encode time per depth (through the maps), torch, 1 and 2 threads, batch 1 and 32, interleaved
   rounds (:func:`st_leap.diagnostics.time_encode`), against the original at torch full depth.

``--encoder NAME=PATH`` adds an encoder saved with its own maps (for example the retrieval-trained model of
``benchmarks/query/retrieval_recipe.json``). The original's document embeddings of each BEIR corpus are kept under
``runs/cache/index/`` between phases and runs.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.query.run --model runs/query/leap

Writes ``benchmarks/results/query/query.{json,md}`` and ``query.png``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_plot, write_result
from st_leap import resources
from st_leap.backends import export
from st_leap.diagnostics import time_encode
from st_leap.evaluation import QueryDepthEvaluator, load_beir_folder
from st_leap.evaluation.beir import document_text
from st_leap.evaluation.sweep import stsb_spearman
from st_leap.exit_maps import fit_exit_maps
from st_leap.reporting import save_model
from st_leap.teacher import teacher_fingerprint

ENCODERS = ("original", "original + maps", "retrofit", "retrofit + maps")


def map_texts(n: int, skip: int, seed: int = 12345) -> list[str]:
    """Query-like sentences for fitting maps: the query pool after the ``skip`` the recipe trained on (no dev text)."""
    pool = resources.query_sentences(None, seed=seed, held_out_documents=2000)
    return pool[skip : skip + n]


def load_saved_encoders(model_path: str, original_path: str, save_dir: Path) -> tuple[dict[str, SentenceTransformer], dict]:
    """The encoders of an earlier run whose mapped models were saved to ``save_dir`` (no refit)."""
    encoders = {"original": st_leap.from_pretrained(original_path, device="cpu"),
                "original + maps": st_leap.load(str(save_dir / "original_maps"), device="cpu")}
    if model_path:
        encoders["retrofit"] = st_leap.from_pretrained(model_path, device="cpu")
        encoders["retrofit + maps"] = st_leap.load(str(save_dir / "retrofit_maps"), device="cpu")
    return encoders, {}


def build_encoders(model_path: str, original_path: str, texts: list[str]) -> tuple[dict[str, SentenceTransformer], dict]:
    original = st_leap.from_pretrained(original_path, device="cpu")
    reference = SentenceTransformer(original_path, device="cpu")
    encoders: dict[str, SentenceTransformer] = {"original": original}
    fits = {}
    mapped = copy.deepcopy(original)
    start = time.perf_counter()
    fits["original + maps"] = {**fit_exit_maps(mapped, texts).to_dict(), "seconds": time.perf_counter() - start}
    encoders["original + maps"] = mapped
    if model_path:
        retrofit = st_leap.from_pretrained(model_path, device="cpu")
        encoders["retrofit"] = retrofit
        mapped = copy.deepcopy(retrofit)
        start = time.perf_counter()
        fit = fit_exit_maps(mapped, texts, target=reference, target_name="original")
        fits["retrofit + maps"] = {**fit.to_dict(), "seconds": time.perf_counter() - start}
        encoders["retrofit + maps"] = mapped
    return encoders, fits


def depth_scores(evaluator: QueryDepthEvaluator, model: SentenceTransformer, depths: list[int]) -> dict[str, Any]:
    metrics = evaluator(model)
    prefix = f"{evaluator.name}_" if evaluator.name else ""
    return {
        "reference_ndcg@10": metrics[f"{prefix}reference_ndcg@10"],
        "ndcg@10": {d: metrics[f"{prefix}depth{d}_ndcg@10"] for d in depths},
        "cosine": {d: metrics[f"{prefix}depth{d}_cosine"] for d in depths},
    }


def choose_depth(scores: dict[str, Any], budget: float) -> int:
    """The shallowest depth whose dev NDCG@10 is within ``budget`` points (x100) of the original's."""
    reference = scores["reference_ndcg@10"]
    for depth, value in sorted(scores["ndcg@10"].items()):
        if 100 * (reference - value) <= budget + 1e-9:  # float noise must not push an exact tie out
            return int(depth)
    return int(max(scores["ndcg@10"]))


INDEX_CACHE = Path("runs/cache/index")


def index_embeddings(reference: SentenceTransformer, texts: list[str]) -> np.ndarray:
    """The reference's document embeddings of ``texts``, kept on disk under ``runs/cache/index/`` (keyed by the
    model's weights, its length and the texts), so that each benchmark phase and run does not embed a BEIR corpus
    again (minutes on CPU)."""
    key = hashlib.sha256()
    key.update(teacher_fingerprint(reference).encode())
    key.update(str(reference.max_seq_length).encode())
    for text in texts:
        key.update(text.encode("utf-8"))
        key.update(b"\0")
    path = INDEX_CACHE / f"{key.hexdigest()[:20]}.npy"
    if path.exists():
        return np.load(path)
    embeddings = reference.encode_document(texts, batch_size=32, show_progress_bar=True, convert_to_numpy=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), embeddings)
    path.with_suffix(".tmp.npy").replace(path)
    return embeddings


def beir_evaluator(name: str, reference: SentenceTransformer, depths: list[int]) -> QueryDepthEvaluator:
    corpus, queries, qrels = load_beir_folder(resources.beir_dir(name))
    relevant = {qid: {doc for doc, score in docs.items() if score > 0} for qid, docs in qrels.items()}
    relevant = {qid: docs for qid, docs in relevant.items() if docs and qid in queries}
    documents = {cid: document_text(doc) for cid, doc in corpus.items()}
    return QueryDepthEvaluator(
        {qid: queries[qid] for qid in relevant}, documents, relevant, reference=reference,
        corpus_embeddings=index_embeddings(reference, list(documents.values())), depths=depths, name=name,
        batch_size=32, show_progress_bar=True,
    )


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Keep the index, make queries shallower", "", f"Command: `{result['meta_info']['command']}`", ""]
    depths = result["depths"]
    head = "| query encoder | " + " | ".join(f"depth {d}" for d in depths) + " |"
    rule = "| --- |" + " ---: |" * len(depths)
    if "dev" in result:
        dev = result["dev"]
        lines += [f"## Dev: cloze retrieval (held out), NDCG@10 x 100 (original {100 * dev['reference']:.2f}); "
                  "cosine to the original's query embedding", "", head, rule]
        for name, scores in dev["encoders"].items():
            cells = [f"{100 * scores['ndcg@10'][d]:.2f} ({scores['cosine'][d]:.3f})" for d in depths]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "Serving depth chosen on dev (shallowest within "
                  f"{result['dev_budget']} NDCG points of the original): "
                  + ", ".join(f"{k}: {v}" for k, v in dev["chosen_depth"].items()), ""]
    for task in ("scifact", "nfcorpus"):
        if task not in result.get("test", {}):
            continue
        block = result["test"][task]
        lines += [f"## {task} test, queries against the original's full-depth documents, NDCG@10 x 100 "
                  f"(original {100 * block['reference']:.2f})", "", head, rule]
        for name, scores in block["encoders"].items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * scores['ndcg@10'][d]:.2f}" for d in depths) + " |")
        lines.append("")
    if "stsb" in result.get("test", {}):
        lines += ["## STS-B test Spearman x 100 per depth", "", head, rule]
        for name, scores in result["test"]["stsb"].items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * scores[d]:.2f}" for d in depths) + " |")
        lines.append("")
    if "int8" in result:
        block = result["int8"]
        lines += [f"## {block['encoder']} at depth {block['depth']} as one ONNX Runtime int8 graph, NDCG@10 x 100", "",
                  "| task | fp32 (torch) | int8 (ONNX Runtime) |", "| --- | ---: | ---: |"]
        for task in ("scifact", "nfcorpus"):
            lines.append(f"| {task} | {100 * block[task]['fp32']:.2f} | {100 * block[task]['int8']:.2f} |")
        lines.append("")
    if "speed" in result:
        lines += [f"## Query encode speed-up of {result.get('speed_encoder', 'the mapped encoder')} at each depth over "
                  "the original at full depth, torch fp32, SciFact test queries (median of interleaved rounds, "
                  "25th-75th band)", "",
                  "| threads | batch | " + " | ".join(f"depth {d}" for d in depths) + " |",
                  "| ---: | ---: |" + " ---: |" * len(depths)]
        for cell in result["speed"]:
            cells = []
            for d in depths:
                row = cell["timings"][f"depth {d}"]
                cells.append(f"{row['speedup']:.2f}x ({row['speedup_band'][0]:.2f}-{row['speedup_band'][1]:.2f})")
            lines.append(f"| {cell['threads']} | {cell['batch_size']} | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("fits"):
        lines += ["## Exit maps fitted (held-out cosine to the target, before -> with the map)", ""]
        for name, fit in result["fits"].items():
            parts = []
            for layer, row in fit["layers"].items():
                before = "-" if row["heldout_cosine_before"] is None else f"{row['heldout_cosine_before']:.3f}"
                parts.append(f"layer {layer}: {before} -> {row['heldout_cosine']:.3f}")
            lines.append(f"- {name} ({fit['num_texts']} texts, {fit['seconds']:.0f} s): " + "; ".join(parts))
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    from st_leap.reporting import pyplot, save_figure

    plt = pyplot()
    tasks = [t for t in ("scifact", "nfcorpus") if t in result.get("test", {})]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        block = result["test"][task]
        for name, scores in block["encoders"].items():
            depths = sorted(int(d) for d in scores["ndcg@10"])
            ax.plot(depths, [100 * scores["ndcg@10"][d] for d in depths], marker="o", label=name)
        ax.axhline(100 * block["reference"], color="black", linestyle="--", label="original, full depth")
        ax.set_title(f"{task}: queries at depth d, original's index")
        ax.set_xlabel("query depth (layers)")
        ax.set_ylabel("NDCG@10 x 100")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/query/leap", help="the retrofit ('' to skip it)")
    parser.add_argument("--original", default="minilm")
    parser.add_argument("--map-texts", type=int, default=20000, help="query-like sentences to fit the maps on")
    parser.add_argument("--map-skip", type=int, default=128000, help="pool sentences the recipe trained on")
    parser.add_argument("--dev-queries", type=int, default=500)
    parser.add_argument("--dev-documents", type=int, default=2000)
    parser.add_argument("--dev-budget", type=float, default=3.0, help="NDCG@10 points (x100) below the original")
    parser.add_argument("--phases", default="dev,test,stsb,int8,speed")
    parser.add_argument("--keep", action="store_true", help="keep the phases an earlier run wrote to --out")
    parser.add_argument("--save-dir", default="runs/query/encoders", help="where the mapped encoders are saved")
    parser.add_argument("--reuse-encoders", action="store_true", help="load the mapped encoders --save-dir holds")
    parser.add_argument("--int8-depth", type=int, default=None, help="export this depth (default: the dev choice)")
    parser.add_argument("--encoder", action="append", default=[],
                        help="NAME=PATH: one more query encoder, loaded as saved (with its own maps)")
    parser.add_argument("--int8-encoder", default=None, help="the encoder to export (default: the mapped retrofit)")
    parser.add_argument("--speed-encoder", default=None, help="the encoder to time (default: the mapped retrofit)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(results_dir("query") / "query"))
    args = parser.parse_args(argv)
    command = command_line("benchmarks.query.run", argv)
    phases = set(args.phases.split(","))
    torch.set_num_threads(2)
    original_path = resources.resolve_model(args.original)
    if args.reuse_encoders:
        encoders, fits = load_saved_encoders(args.model, original_path, Path(args.save_dir))
    else:
        encoders, fits = build_encoders(args.model, original_path, map_texts(args.map_texts, args.map_skip))
        for name in ("original + maps", "retrofit + maps"):
            if name in encoders:
                save_model(encoders[name], Path(args.save_dir) / name.replace(" + ", "_"))
    for spec in args.encoder:
        name, _, path = spec.partition("=")
        encoders[name] = st_leap.load(path, device="cpu")
    depths = list(range(1, encoders["original"][0].num_layers + 1))
    reference = SentenceTransformer(original_path, device="cpu")
    result: dict[str, Any] = {"model": args.model, "original": original_path, "depths": depths, "fits": fits,
                              "dev_budget": args.dev_budget, "meta_info": meta_info(command)}
    earlier = Path(args.out).with_suffix(".json")
    if args.keep and earlier.exists():
        kept = json.loads(earlier.read_text())
        result = {**kept, **{k: v for k, v in result.items() if k not in ("fits",) or v}}
        result["commands"] = [*kept.get("commands", [kept["meta_info"]["command"]]), command]
        for block in ("dev",):  # JSON turned the depth keys into strings
            for scores in result.get(block, {}).get("encoders", {}).values():
                for key in ("ndcg@10", "cosine"):
                    scores[key] = {int(d): v for d, v in scores[key].items()}
        for task in ("scifact", "nfcorpus"):
            for scores in result.get("test", {}).get(task, {}).get("encoders", {}).values():
                for key in ("ndcg@10", "cosine"):
                    scores[key] = {int(d): v for d, v in scores[key].items()}
        for name, scores in result.get("test", {}).get("stsb", {}).items():
            result["test"]["stsb"][name] = {int(d): v for d, v in scores.items()}

    def save() -> None:
        write_result(args.out, result, markdown(result))

    if "dev" in phases:
        queries, corpus, relevant = resources.cloze_retrieval_dev(args.dev_queries, args.dev_documents)
        evaluator = QueryDepthEvaluator(queries, corpus, relevant, reference=reference, depths=depths, name="dev")
        scores = {name: depth_scores(evaluator, model, depths) for name, model in encoders.items()}
        result["dev"] = {"reference": evaluator.reference_ndcg, "encoders": scores,
                         "chosen_depth": {name: choose_depth(s, args.dev_budget) for name, s in scores.items()}}
        save()
    if "test" in phases:
        result["test"] = {}
        for task in ("scifact", "nfcorpus"):
            evaluator = beir_evaluator(task, reference, depths)
            scores = {name: depth_scores(evaluator, model, depths) for name, model in encoders.items()}
            result["test"][task] = {"reference": evaluator.reference_ndcg, "encoders": scores}
            save()
    if "stsb" in phases:
        result.setdefault("test", {})["stsb"] = {
            name: {d: stsb_spearman(model, "test", truncate_layers=d, exit_threshold=None) for d in depths}
            for name, model in encoders.items()
        }
        save()
    if "int8" in phases and ("dev" in result or args.int8_depth):
        name = args.int8_encoder or ("retrofit + maps" if "retrofit + maps" in encoders else "original + maps")
        depth = args.int8_depth or result["dev"]["chosen_depth"][name]
        folder = Path(args.save_dir) / f"{name.replace(' + ', '_')}_onnx_int8_depth{depth}"
        torch.set_num_threads(1)
        exported = st_leap.load(str(export(encoders[name], folder, "onnx", quantize="int8", depth=depth)))
        torch.set_num_threads(2)
        block = {"encoder": name, "depth": depth, "folder": str(folder)}
        for task in ("scifact", "nfcorpus"):
            evaluator = beir_evaluator(task, reference, [depth])
            block[task] = {"int8": evaluator.ndcg(exported),
                           "fp32": evaluator.ndcg(encoders[name], truncate_layers=depth, exit_threshold=None)}
        result["int8"] = block
        save()
    if "speed" in phases:
        texts = list(load_beir_folder(resources.beir_dir("scifact"))[1].values())
        settings = {"full": {"exit_threshold": None}}
        settings.update({f"depth {d}": {"truncate_layers": d, "exit_threshold": None} for d in depths})
        timed_name = args.speed_encoder or ("retrofit + maps" if "retrofit + maps" in encoders else "original + maps")
        timed = encoders[timed_name]
        result["speed"] = []
        result["speed_encoder"] = timed_name
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch_size, n in ((1, 64), (32, 256)):
                timings = time_encode(timed, texts[:n], settings, batch_size=batch_size, repeats=args.repeats,
                                      models={"full": encoders["original"]})
                result["speed"].append({"threads": threads, "batch_size": batch_size, "texts": n, "timings": timings})
                save()
    save()
    write_plot(plot, result, args.out)
    print(f"wrote {Path(args.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
