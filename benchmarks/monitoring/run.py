"""Exit monitoring on a real model: a replayed change of traffic raises an alert and falls back; the cost of watching.

The model: all-MiniLM-L6-v2 with closed-form exit maps fitted on STS-B train sentences (``st_leap.fit_exit_maps``),
calibrated on STS-B dev (``st_leap.calibrate``, exit thresholds only, so that the exit layer can move with the
traffic; a static depth has one exit layer whatever comes in) within a 5-point drop, saved with its monitoring
reference. The budget is 5 points because the stock model with maps has no exits worth the name within 1 point:
the setting that keeps STS-B, theta 0.95, runs STS-B test sentences at E[layers] 5.99, and theta 0.90 at 4.70 costs
4.7 points (``benchmarks/results/pareto/maps.md``); a monitor of a model that never exits has nothing to watch. A LEAP-trained model exits within 1 point (the 9,000-step recipe), at 93
minutes of training. Phases:

- ``prepare``: fit, calibrate and save the model (``runs/monitoring/calibrated``);
- ``replay``: ``st-leap monitor`` on two streams each: STS-B test sentences (the unchanged traffic: the first
  ``--unchanged-windows`` windows), then NFCorpus abstracts or SciFact queries (the changed traffic). Results in
  ``benchmarks/results/monitoring/<stream>/monitor.{json,png}``;
- ``overhead``: the time of ``ExitMonitor.encode`` (sampling at 1%, its full-depth passes counted) over the time
  of ``st_leap.encode_with_exits`` on the same requests (STS-B test sentences), at batch 1 and 32, one thread,
  interleaved rounds: the median per-round ratio and its 25th-75th percentile band.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.monitoring.run

Writes ``benchmarks/results/monitoring/monitoring.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import command_line, meta_info, results_dir, write_result
from st_leap import resources

RUNS = Path("runs/monitoring")
STREAMS = {"nfcorpus_abstracts": ("nfcorpus", "corpus.jsonl.gz"), "scifact_queries": ("scifact", "queries.jsonl")}


def _texts_file(path: Path, texts: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    return str(path)


def _stsb_test() -> list[str]:
    """STS-B test sentences in a seeded random order. In file order they come in blocks by source (captions, news,
    forums), whose mean exit layers differ by more than a layer: a stream that changes every few windows, not
    the unchanged traffic that calibration on the whole of STS-B dev describes."""
    texts = list(dict.fromkeys(resources.stsb_sentences("test")))
    random.Random(0).shuffle(texts)
    return texts


def prepare(max_quality_drop: float) -> dict[str, Any]:
    import st_leap
    from st_leap.exit_maps import fit_exit_maps

    model = st_leap.from_pretrained(resources.minilm_path())
    train = list(dict.fromkeys(resources.stsb_sentences("train")))
    start = time.perf_counter()
    fit_exit_maps(model, train)
    fit_seconds = time.perf_counter() - start
    cal = st_leap.calibrate(model, None, max_quality_drop, static_depths=(), save_model=RUNS / "calibrated")
    pick = {role: {k: e.get(k) for k in ("metric", "full", "picked", "reason")} for role, e in cal["roles"].items()}
    return {"maps_texts": len(train), "maps_fit_seconds": fit_seconds, "max_quality_drop": max_quality_drop,
            "pick": pick}


def replay(window: int, sample_rate: float, unchanged_windows: int) -> dict[str, Any]:
    from st_leap.cli import main
    from st_leap.evaluation.user_data import read_texts

    unchanged = _stsb_test()[: window * unchanged_windows]
    base = _texts_file(RUNS / "streams" / "stsb_test.txt", unchanged)
    out: dict[str, Any] = {}
    for name, (task, file) in STREAMS.items():
        changed = read_texts(resources.beir_dir(task) / file).texts[: 2 * window]
        changed_path = _texts_file(RUNS / "streams" / f"{name}.txt", changed)
        folder = results_dir("monitoring") / name
        argv = ["monitor", str(RUNS / "calibrated"), "--stream", base, "--stream", changed_path,
                "--window", str(window), "--sample-rate", str(sample_rate), "--out", str(folder)]
        print("st-leap", " ".join(argv), flush=True)
        if main(argv) != 0:
            raise RuntimeError(f"st-leap monitor failed on {name}")
        result = json.loads((folder / "monitor.json").read_text(encoding="utf-8"))
        windows = result["windows"]
        before = [w for w in windows if w["stream"] == base]
        after = [w for w in windows if w["stream"] != base]
        alerts = [e for e in result["events"] if e["kind"] == "alert"]
        first_after = next((i for i, w in enumerate(after) if w.get("alert")), None)
        out[name] = {
            "command": "st-leap " + " ".join(argv),
            "unchanged_windows": len(before),
            "alerts_on_unchanged": sum(bool(w.get("alert")) for w in before),
            "changed_windows": len(after),
            "alert_in_changed_window": None if first_after is None else first_after + 1,
            "signals": sorted({s for w in after for s in (w.get("alert") or [])}),
            "fallback_after": [bool(w.get("fallback")) for w in after],
            "windows": [{k: w.get(k) for k in ("stream", "expected_layers", "exit_rate", "nn_overlap", "cosine",
                                                "alert", "fallback", "num_checked")} for w in windows],
            "reference": {k: result["reference"].get(k) for k in ("expected_layers", "exit_rate", "nn_overlap",
                                                                    "cosine")},
            "events": alerts + [e for e in result["events"] if e["kind"] != "alert"],
        }
    return out


def _round(model: Any, monitor: Any, requests: list[list[str]], which: str, batch_size: int) -> float:
    from st_leap import encode_with_exits

    start = time.perf_counter()
    for request in requests:
        if which == "monitor":
            monitor.encode(request, batch_size=batch_size)
        else:
            encode_with_exits(model, request, batch_size=batch_size, show_progress_bar=False)
    return time.perf_counter() - start


def overhead(sample_rate: float, repeats: int, texts_per_round: dict[int, int]) -> dict[str, Any]:
    import st_leap
    from st_leap.monitoring import ExitMonitor

    model = st_leap.load(str(RUNS / "calibrated"))
    texts = _stsb_test()
    out: dict[str, Any] = {}
    for batch, count in texts_per_round.items():
        requests = [texts[i : i + batch] for i in range(0, count, batch)]
        monitor = ExitMonitor(model, reference=str(RUNS / "calibrated"), window=1000, sample_rate=sample_rate,
                              fallback=None)
        for which in ("plain", "monitor"):  # warm-up
            _round(model, monitor, requests[: max(1, len(requests) // 10)], which, batch)
        times: dict[str, list[float]] = {"plain": [], "monitor": []}
        for r in range(repeats):
            for which in (("plain", "monitor") if r % 2 == 0 else ("monitor", "plain")):
                times[which].append(_round(model, monitor, requests, which, batch))
        ratios = np.array(times["monitor"]) / np.array(times["plain"])
        role = monitor.snapshot()["roles"].get("default", {})
        probed = {k: role.get(k) for k in ("requests", "texts", "samples")}
        out[f"batch{batch}"] = {
            "batch_size": batch, "requests_per_round": len(requests), "texts_per_round": count,
            "plain_seconds_median": float(np.median(times["plain"])),
            "monitor_seconds_median": float(np.median(times["monitor"])),
            "overhead_median": float(np.median(ratios) - 1.0),
            "overhead_band": [float(np.percentile(ratios, 25) - 1.0), float(np.percentile(ratios, 75) - 1.0)],
            "rounds": repeats, "counters": probed,
        }
        print(f"batch {batch}: overhead {out[f'batch{batch}']['overhead_median']:+.2%} "
              f"(band {out[f'batch{batch}']['overhead_band'][0]:+.2%} .. {out[f'batch{batch}']['overhead_band'][1]:+.2%})",
              flush=True)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Exit monitoring on all-MiniLM-L6-v2 with exit maps, calibrated on STS-B dev", "", "Commands:", ""]
    lines += [f"    {c}" for c in result.get("commands", [result["meta"]["command"]])] + [""]
    if "prepare" in result:
        prepared = result["prepare"]
        lines += [f"Exit maps fitted on {prepared['maps_texts']} STS-B train sentences in {prepared['maps_fit_seconds']:.0f} s. "
                  f"Calibrated pick (within {prepared['max_quality_drop']} STS-B dev points, thresholds only):", ""]
        lines += [f"- {role}: {entry['reason']}" for role, entry in prepared["pick"].items()] + [""]
    if "replay" in result:
        lines += ["## Replay: STS-B test sentences, then a different stream", "",
                  "| changed stream | unchanged windows | alerts on them | alert in changed window | signal(s) | "
                  "fallback after alert |", "|---|---|---|---|---|---|"]
        for name, r in result["replay"].items():
            lines.append(f"| {name} | {r['unchanged_windows']} | {r['alerts_on_unchanged']} | "
                         f"{r['alert_in_changed_window']} | {', '.join(r['signals']) or '-'} | "
                         f"{any(r['fallback_after'])} |")
        lines += ["", "Per window (E[layers], exit rate, NN@10 overlap of the sampled texts, cosine to full depth):", ""]
        for name, r in result["replay"].items():
            ref = r["reference"]
            lines += [f"### {name}", "", f"Reference: E[layers] {ref['expected_layers']:.2f}, exit rate "
                      f"{ref['exit_rate']:.3f}, NN@10 {ref['nn_overlap']:.3f}, cosine {ref['cosine']:.3f}", "",
                      "| stream | E[layers] | exit rate | NN@10 | cosine | checked | out of band | fallback |",
                      "|---|---|---|---|---|---|---|---|"]
            for w in r["windows"]:
                def f(x: Any) -> str:
                    return "-" if x is None else f"{x:.3f}"
                lines.append(f"| {Path(w['stream']).stem} | {f(w['expected_layers'])} | {f(w['exit_rate'])} | "
                             f"{f(w['nn_overlap'])} | {f(w['cosine'])} | {w['num_checked']} | {', '.join(w['alert'] or []) or '-'} "
                             f"| {w['fallback']} |")
            lines.append("")
    if "overhead" in result:
        lines += ["## Overhead of the monitor (sampling 1%, full-depth passes counted; one thread)", "",
                  "| batch | requests a round | rounds | plain s (median) | monitored s (median) | overhead (median) "
                  "| 25-75% band |", "|---|---|---|---|---|---|---|"]
        for r in result["overhead"].values():
            lines.append(f"| {r['batch_size']} | {r['requests_per_round']} | {r['rounds']} | "
                         f"{r['plain_seconds_median']:.3f} | {r['monitor_seconds_median']:.3f} | "
                         f"{r['overhead_median']:+.2%} | {r['overhead_band'][0]:+.2%} .. {r['overhead_band'][1]:+.2%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="prepare,replay,overhead")
    parser.add_argument("--max-quality-drop", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=250)
    parser.add_argument("--replay-sample-rate", type=float, default=0.1)
    parser.add_argument("--unchanged-windows", type=int, default=10)
    parser.add_argument("--sample-rate", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stem = results_dir("monitoring") / "monitoring"
    previous = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
    command = command_line("benchmarks.monitoring.run", argv)
    result = {**previous, "meta": meta_info(command, threads=args.threads),
              "commands": [*previous.get("commands", []), command]}
    phases = args.phases.split(",")
    if "prepare" in phases:
        result["prepare"] = prepare(args.max_quality_drop)
        write_result(stem, result, markdown(result))  # each phase kept as it ends
    if "replay" in phases:
        result["replay"] = replay(args.window, args.replay_sample_rate, args.unchanged_windows)
        write_result(stem, result, markdown(result))
    if "overhead" in phases:
        result["overhead"] = overhead(args.sample_rate, args.repeats, {1: 400, 32: 1280})
    write_result(stem, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
