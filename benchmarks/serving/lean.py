"""Where a short query's time goes: inside the graph or outside it, in ``encode_query`` and in the lean path.

For each model (``--models NAME=SPEC``: a torch model, or an export, made on demand with ``int8:SOURCE``), at batch
1 on one thread (``torch.set_num_threads(1)``, and the ONNX Runtime session opened on one thread), each test query
of each task is encoded alone, as the server's worker encodes a lone request: ``model.encode_query([query],
batch_size=32, show_progress_bar=False, convert_to_numpy=True)``. Timed per call: the whole call; the graph alone
(every call of the export's ``ExportedEncoder.runner``, by wrapping it; for a torch model the model's forward,
through forward hooks); the tokenizer call alone (wrapping an export's tokenizer) and the whole ``preprocess``
step. Outside the graph is the whole call minus the graph.

For an exported query route the same queries also go through the lean path the server uses,
``st_leap.serving.lean_encode`` (tokenizer to numpy, one graph call, nothing else), timed the same way. The two paths
alternate query by query (which one goes first alternates too) over ``--rounds`` rounds after ``--warmup`` queries;
reported are medians with the 25-75% band over the calls, the lean path's speed-up as the median (and band) of
per-round ratios of medians, and the largest absolute difference between the two paths' embeddings (must be
<= 1e-6).

    HF_HUB_OFFLINE=1 python -m benchmarks.serving.lean
    HF_HUB_OFFLINE=1 python -m benchmarks.serving.lean --models qe-int8=int8:st_leap_demo/query_encoder --tasks scifact

Writes ``benchmarks/results/serving/lean.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.serving._server import (
    DEFAULT_MODELS,
    DEFAULT_TASKS,
    DEFAULT_WORK_DIR,
    SPEC_HELP,
    band,
    fmt_band,
    load_like_serve,
    prepare_model,
    split_list,
    task_label,
    task_queries,
)

MAX_ABS_DIFF = 1e-6  # the lean path must give encode_query's embeddings
SERVER_BATCH = 32  # the batch_size the server passes to encode (its default --max-batch-size)
MEASURES = ("total", "graph", "outside", "tokenizer", "preprocess")


class _Timed:
    """A callable that adds its calls' time to ``clock[key]``; other attributes are the target's."""

    def __init__(self, target: Any, clock: dict[str, float], key: str) -> None:
        self._target, self._clock, self._key = target, clock, key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._target(*args, **kwargs)
        finally:
            self._clock[self._key] += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class Instrumented:
    """A model with its graph, tokenizer and ``preprocess`` timed; :meth:`restore` puts them back.

    For an exported query route the graph is ``ExportedEncoder.runner``; for any other model it is the model's
    forward (forward hooks on the ``SentenceTransformer``).
    """

    def __init__(self, model: Any) -> None:
        from st_leap import serving

        self.model = model
        self.clock = {"graph": 0.0, "tokenizer": 0.0, "preprocess": 0.0}
        self.lean = serving.lean_module(model, "query")
        self.prompt = serving.role_prompt(model, "query")
        self._undo: list[Any] = []
        if self.lean is not None:
            runner = self.lean.runner
            self.lean.runner = _Timed(runner, self.clock, "graph")
            self._undo.append(lambda: setattr(self.lean, "runner", runner))
        else:
            started: list[float] = []
            pre = model.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
            post = model.register_forward_hook(lambda *_: self._add("graph", time.perf_counter() - started.pop()))
            self._undo += [pre.remove, post.remove]
        # An export's tokenizer is a plain attribute, called once per batch; a torch module's is a property of its
        # processor, which is checked by type: it is timed with the whole preprocess step only.
        self.has_tokenizer = self.lean is not None
        if self.has_tokenizer:
            tokenizer = self.lean.tokenizer
            self.lean.tokenizer = _Timed(tokenizer, self.clock, "tokenizer")
            self._undo.append(lambda: setattr(self.lean, "tokenizer", tokenizer))
        preprocess = model.preprocess
        model.preprocess = _Timed(preprocess, self.clock, "preprocess")
        self._undo.append(lambda: delattr(model, "preprocess"))

    def _add(self, key: str, seconds: float) -> None:
        self.clock[key] += seconds

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def encode_query(self, text: str) -> np.ndarray:
        return self.model.encode_query([text], batch_size=SERVER_BATCH, show_progress_bar=False, convert_to_numpy=True)

    def lean_encode(self, text: str) -> np.ndarray:
        from st_leap.serving import lean_encode

        return lean_encode(self.lean, [text], self.prompt, batch_size=SERVER_BATCH)

    def measure(self, path: str, text: str) -> tuple[dict[str, float], np.ndarray]:
        """One call of ``path`` on one text: its times (seconds) and its output."""
        for key in self.clock:
            self.clock[key] = 0.0
        call = self.encode_query if path == "encode_query" else self.lean_encode
        start = time.perf_counter()
        out = call(text)
        total = time.perf_counter() - start
        times = {
            "total": total,
            "graph": self.clock["graph"],
            "outside": total - self.clock["graph"],
            "tokenizer": self.clock["tokenizer"] if self.has_tokenizer else float("nan"),
            "preprocess": self.clock["preprocess"] if path == "encode_query" else float("nan"),
        }
        return times, np.asarray(out, dtype=np.float32)


def measure_task(model: Any, queries: list[str], rounds: int, warmup: int) -> dict[str, Any]:
    """Both paths (or ``encode_query`` alone for a model without a lean route) over ``queries``, interleaved."""
    tool = Instrumented(model)
    paths = ["encode_query", "lean"] if tool.lean is not None else ["encode_query"]
    calls: dict[str, list[list[dict[str, float]]]] = {path: [[] for _ in range(rounds)] for path in paths}
    max_diff = 0.0
    try:
        for i in range(warmup):
            for path in paths:
                tool.measure(path, queries[i % len(queries)])
        for r in range(rounds):
            for i, text in enumerate(queries):
                order = paths if (i + r) % 2 == 0 else paths[::-1]
                outputs = {}
                for path in order:
                    times, outputs[path] = tool.measure(path, text)
                    calls[path][r].append(times)
                if "lean" in outputs:
                    max_diff = max(max_diff, float(np.abs(outputs["lean"] - outputs["encode_query"]).max()))
    finally:
        tool.restore()
    result: dict[str, Any] = {
        "paths": {},
        "graph_is": "ExportedEncoder.runner" if tool.lean is not None else "the model's forward (torch)",
    }
    for path in paths:
        flat = [call for round_calls in calls[path] for call in round_calls]
        stats = {f"{key}_us": band([c[key] * 1e6 for c in flat if c[key] == c[key]]) for key in MEASURES}
        stats["outside_share"] = band([c["outside"] / c["total"] for c in flat])
        result["paths"][path] = stats
    if "lean" in paths:
        medians = {
            path: [float(np.median([c["total"] for c in calls[path][r]])) for r in range(rounds)] for path in paths
        }
        result["lean_speedup"] = band([b / a for b, a in zip(medians["encode_query"], medians["lean"])])
        result["saved_us"] = band([(b - a) * 1e6 for b, a in zip(medians["encode_query"], medians["lean"])])
        result["max_abs_diff"] = max_diff
    return result


def markdown(result: dict[str, Any]) -> str:
    info = result["run_info"]
    lines = [
        "# Where a short query's time goes: inside the graph or outside it",
        "",
        f"Command: `{result['meta_info']['command']}`",
        "",
        f"Batch 1, one thread (torch and ONNX Runtime), {info['queries']} test queries per task, {info['rounds']} "
        f"rounds after {info['warmup']} warm-up queries, the paths alternating query by query. Times in microseconds "
        "per query: median [25%, 75%] over the calls. *Graph*: the export's `ExportedEncoder.runner` calls (torch: "
        "the model's forward); *outside*: the whole call minus the graph; *tokenizer*: the tokenizer call alone; "
        "*preprocess*: `encode`'s whole preprocessing step (tokenizer included). `encode_query` is the call the "
        "server made for every model before the lean path; `lean` is `st_leap.serving.lean_encode`, which the "
        "server now uses for exported routes. The machine is a shared 2-core one: compare within a row, not "
        "across runs.",
        "",
        "| model | task | path | whole call | graph | outside | outside share | tokenizer | preprocess |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["results"]:
        for path, stats in row["paths"].items():
            lines.append(
                f"| {row['model']} | {row['task']} | {path} | {fmt_band(stats['total_us'], spec='.0f')} | "
                f"{fmt_band(stats['graph_us'], spec='.0f')} | {fmt_band(stats['outside_us'], spec='.0f')} | "
                f"{fmt_band(stats['outside_share'], 100, '.0f')}% | {fmt_band(stats['tokenizer_us'], spec='.0f')} | "
                f"{fmt_band(stats['preprocess_us'], spec='.0f')} |"
            )
    lean_rows = [row for row in result["results"] if "lean_speedup" in row]
    if lean_rows:
        lines += [
            "",
            "Before (`encode_query`) and after (`lean_encode`), per query: the speed-up is the median [band] "
            "of per-round ratios of median call times; the saving, of per-round differences.",
            "",
            "| model | task | speed-up | saved per query (us) | max abs diff of the embeddings |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {row['model']} | {row['task']} | {fmt_band(row['lean_speedup'], spec='.2f')}x | "
            f"{fmt_band(row['saved_us'], spec='.0f')} | {row['max_abs_diff']:.1e} |"
            for row in lean_rows
        ]
    others = [row["model"] for row in result["results"] if "lean_speedup" not in row]
    if others:
        lines += ["", f"No lean path for {', '.join(sorted(set(others)))}: not one exported graph per route."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help=SPEC_HELP,
    )
    parser.add_argument(
        "--tasks", default=DEFAULT_TASKS, help="scifact, nfcorpus or BEIR folders (default: %(default)s)"
    )
    parser.add_argument("--queries", type=int, default=100, help="test queries per task (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over the queries (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up queries per path (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="which queries: a shuffle's seed (default: %(default)s)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="where exports are made (default: %(default)s)")
    parser.add_argument("--out", default=str(results_dir("serving") / "lean"))
    args = parser.parse_args(argv)
    if args.queries < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--queries and --rounds must be >= 1, --warmup >= 0")
    torch.set_num_threads(1)  # before loading: an export's runtime session takes torch's thread count
    tasks = split_list(args.tasks)
    queries = {task: task_queries(task, args.queries, args.seed) for task in tasks}
    result: dict[str, Any] = {
        "run_info": {
            "models": args.models,
            "tasks": [task_label(t) for t in tasks],
            "queries": args.queries,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "threads": 1,
            "batch_size": 1,
        },
        "results": [],
        "meta_info": meta_info(command_line("benchmarks.serving.lean", argv)),
    }
    failed = []
    for spec in args.models:
        served = prepare_model(spec, args.work_dir)
        model = load_like_serve(served.path)
        for task in tasks:
            print(
                f"{served.name} on {task_label(task)}: {len(queries[task])} queries x {args.rounds} rounds", flush=True
            )
            row = {
                "model": served.name,
                "path": served.path,
                "task": task_label(task),
                **measure_task(model, queries[task], args.rounds, args.warmup),
            }
            if row.get("max_abs_diff", 0.0) > MAX_ABS_DIFF:
                failed.append(f"{served.name} on {row['task']}: max abs diff {row['max_abs_diff']:.2e}")
            result["results"].append(row)
        del model
    result["lean_equal"] = not failed
    text = markdown(result)
    write_result(args.out, result, text)
    print(text)
    if failed:
        print("the lean path differs from encode_query: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
