"""Which start and loss make the best query encoder for a kept index, on the corpus's own dev signal.

Reads the ``query_encoder.json`` that ``st-leap fit-query-encoder`` writes beside each model (its dev evaluations
every ``eval_steps``, its minutes) and compares the runs at the steps they share: the initialisation (``first``,
``spread``, ``leap``) and, with it, the loss (``first`` / ``spread``: the final embedding toward the index model's
plus retrieval of the text's own document; ``leap``: LEAPLoss at every depth plus the same retrieval term). Dev is
texts of held-out documents retrieving their own document from the whole index (never a query set or qrels).

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.query.inits runs/qe/scifact_d3 runs/qe/scifact_d3_spread_250 \\
        runs/qe/scifact_d3_leap_250

Writes ``benchmarks/results/query/inits.{json,md,png}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks._common import command_line, meta_info, results_dir, write_plot, write_result
from benchmarks.query.curve import curve, plot_curves
from st_leap.query_encoder import read_result


def run_summary(folder: Path) -> dict[str, Any]:
    record = read_result(folder)
    depth = record["depth"]
    points = [{"step": row["step"], "ndcg@10": row["ndcg@10"][depth], "cosine": row["cosine"][depth],
               "reference_ndcg@10": row.get("reference_ndcg@10")} for row in curve(record["log_history"])]
    return {
        "path": str(folder), "init": record["init"], "settings": settings(record), "depth": depth, "steps": record["steps"],
        "max_steps": record["config"]["max_steps"], "train_minutes": record["train_seconds"] / 60,
        # a resumed run recorded before its earlier segments were counted: its minutes are the last segment's only
        "train_minutes_partial": bool(record.get("resumed_from")) and record.get("earlier_train_seconds") is None,
        "index_minutes": record["index_seconds"] / 60, "maps": record["maps"], "final_dev": record["dev"],
        "curve": points,
    }


def settings(record: dict[str, Any]) -> str:
    """What a run set away from the defaults: its student, the retrieval levers, the distillation weight, the kinds
    of texts (``"default"`` when none)."""
    from st_leap.corpus import QUERY_KINDS

    config = record["config"]
    student = Path(record["student"]) if record.get("student") else None
    if student is not None and student.name == "model":  # a packaged model's folder: name its package
        student = student.parent
    parts = [f"student {student.name}"] if student is not None else []
    retrieval = config.get("retrieval")
    if retrieval is None:
        parts.append("retrieval off (distillation alone)")
    parts += [f"{key} {value}" for key, value in (retrieval or {}).items() if key not in ("layers", "scale")]
    if record.get("layers"):
        parts.append("layers " + ",".join(map(str, record["layers"])))
    batch = config.get("batch_size", 64)
    if batch != 64:
        texts = config.get("num_sentences")
        parts.append(f"batch {batch}" + (f" on {texts} texts" if texts else ""))
    if config.get("seed", 42) != 42:  # the training seed (fit-query-encoder --train-seed); 42 the default
        parts.append(f"train seed {config['seed']}")
    if config.get("learning_rate", 1e-4) != 1e-4:
        parts.append(f"learning rate {config['learning_rate']:g}")
    final = (config.get("loss") or {}).get("final_weight", 1.0)
    if final != 1.0:
        parts.append(f"distill weight {final}")
    kinds = (config.get("corpus") or {}).get("kinds")
    if kinds and tuple(kinds) != QUERY_KINDS:
        parts.append("kinds " + "+".join(kinds))
    queries = (config.get("corpus") or {}).get("queries")
    if queries:
        # Runs made while the default was 0.25 recorded no fraction; fit_query_encoder now always records it.
        fraction = config["corpus"].get("query_fraction", 0.25)
        parts.append(f"past queries {Path(queries).name} ({fraction:g} of batches)")
    return ", ".join(parts) or "default"


def markdown(command: str, runs: list[dict[str, Any]]) -> str:
    shared = sorted(set.intersection(*[{p["step"] for p in r["curve"]} for r in runs])) if runs else []
    references = _references(runs)
    if len(set(references.values())) == 1:
        against = f" (the index model at full depth: {100 * next(iter(references.values())):.2f} NDCG@10)"
    else:  # runs on several corpora: each against its own index
        against = " (the index model at full depth: " + ", ".join(
            f"{100 * value:.2f} for `{path}`" for path, value in references.items()) + ")"
    lines = ["# Query encoder for a kept index: initialisation and loss, on the corpus dev split", "",
             f"Command: `{command}`", "",
             "Dev: texts of 200 held-out documents retrieving their own document from the whole index"
             f"{against if references else ''}.", "",
             "| run | init | settings | steps (of schedule) | " + " | ".join(f"dev NDCG@10 at step {s}" for s in shared)
             + " | final dev NDCG@10 (cosine) | maps | training min | index pass min |",
             "| --- | --- | --- | ---: |" + " ---: |" * len(shared) + " ---: | --- | ---: | ---: |"]
    for r in runs:
        at = {p["step"]: p for p in r["curve"]}
        cells = [f"{100 * at[s]['ndcg@10']:.2f}" for s in shared]
        lines.append(f"| `{r['path']}` | {r['init']} | {r.get('settings', '')} | {r['steps']} ({r['max_steps']}) | " + " | ".join(cells)
                     + f" | {100 * r['final_dev']['ndcg@10']:.2f} ({r['final_dev']['cosine']:.3f}) | {r['maps']} | "
                     f"{r['train_minutes']:.1f}{' (last segment)' if r.get('train_minutes_partial') else ''} | "
                     f"{r['index_minutes']:.1f} |")
    lines += ["", "Learning curves (dev NDCG@10 x 100 per evaluation):", ""]
    for r in runs:
        lines.append(f"- {r['init']}, {r.get('settings', '')} (`{r['path']}`): "
                     + ", ".join(f"step {p['step']}: {100 * p['ndcg@10']:.2f}" for p in r["curve"]))
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    series = [(f"{Path(r['path']).name} ({r['steps']} steps)", [p["step"] for p in r["curve"]], [p["ndcg@10"] for p in r["curve"]],
               [p["cosine"] for p in r["curve"]]) for r in runs]
    references = set(_references(runs).values())
    plot_curves(series, references.pop() if len(references) == 1 else None, path)  # one line only for one index


def _references(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each run's index model at full depth on its dev split (run path -> NDCG@10), where its record has it."""
    return {r["path"]: next(p["reference_ndcg@10"] for p in r["curve"] if p.get("reference_ndcg@10"))
            for r in runs if any(p.get("reference_ndcg@10") for p in r["curve"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="Folders written by st-leap fit-query-encoder --out")
    parser.add_argument("--out", default=str(results_dir("query") / "inits"))
    args = parser.parse_args(argv)
    command = command_line("benchmarks.query.inits", argv)
    runs = [run_summary(Path(folder)) for folder in args.runs]
    write_result(args.out, {"runs": runs, "meta_info": meta_info(command)}, markdown(command, runs))
    write_plot(plot, runs, args.out)
    print(f"wrote {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
