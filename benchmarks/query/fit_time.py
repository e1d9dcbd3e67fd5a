"""How many texts the closed-form exit maps need: fit time on 2 cores against quality, per number of texts.

For each size, maps are fitted on the stock model (into its own final space) from the first ``n`` query-like
sentences after those the query recipe trained on (``benchmarks.query.run.map_texts``; no dev or test text), timed
end to end (embedding pass, ridge grid, held-out choice, refit), then scored at depth 3: STS-B test Spearman and
SciFact test NDCG@10 of queries against the original's full-depth index.

    HF_HUB_OFFLINE=1 python -m benchmarks.query.fit_time

Writes ``benchmarks/results/query/fit_time.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.query.run import beir_evaluator, map_texts
from st_leap import resources
from st_leap.evaluation.sweep import stsb_spearman
from st_leap.exit_maps import fit_exit_maps


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Closed-form exit maps: texts, fit time and quality", "", f"Command: `{result['meta_info']['command']}`",
             "", f"all-MiniLM-L6-v2, maps into its own final space, {result['threads']} threads. Quality at depth "
             f"{result['depth']}: STS-B test Spearman x 100; SciFact test NDCG@10 x 100 against the original's "
             "full-depth index. Seconds: the whole `fit_exit_maps` call.", "",
             "| texts | seconds | STS-B | SciFact | held-out cosine at the depth |", "| ---: | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        lines.append(f"| {row['texts']} | {row['seconds']:.1f} | {row['stsb']:.2f} | {row['scifact']:.2f} | "
                     f"{row['heldout_cosine']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,5000,10000,20000")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(results_dir("query") / "fit_time"))
    args = parser.parse_args(argv)
    command = command_line("benchmarks.query.fit_time", argv)
    torch.set_num_threads(args.threads)
    path = resources.minilm_path()
    original = st_leap.from_pretrained(path, device="cpu")
    evaluator = beir_evaluator("scifact", SentenceTransformer(path, device="cpu"), [args.depth])
    sizes = [int(s) for s in args.sizes.split(",")]
    pool = map_texts(max(sizes), 128000)
    result: dict[str, Any] = {"depth": args.depth, "threads": args.threads, "rows": [], "meta_info": meta_info(command)}
    fit_exit_maps(copy.deepcopy(original), pool[:200], show_progress_bar=False)  # warm-up: first-call costs
    for n in sizes:
        model = copy.deepcopy(original)
        start = time.perf_counter()
        fit = fit_exit_maps(model, pool[:n], show_progress_bar=False)
        seconds = time.perf_counter() - start
        cut = {"truncate_layers": args.depth, "exit_threshold": None}
        result["rows"].append({
            "texts": n, "seconds": seconds, "heldout_cosine": fit.layers[args.depth]["heldout_cosine"],
            "stsb": 100 * stsb_spearman(model, "test", **cut), "scifact": 100 * evaluator.ndcg(model, **cut),
        })
        write_result(args.out, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
