"""One table for a multi-stage recipe: each stage's STS-B exits and quality, cumulative steps and training time.

    HF_HUB_OFFLINE=1 python -m benchmarks.train_recipe.stages --name train_recipe_stages train_recipe_baseline:anchors_minilm \
        train_recipe_leap:table6_leap_recipe train_recipe_continue train_recipe_continue2 train_recipe_continue3 \
        train_recipe_passages

Reads ``benchmarks/results/train_recipe/<stage>.json`` written by ``run.py`` (one per stage, in training order; each stage
starts from the previous stage's model; a ``run.py --baseline`` result counts as the untrained row) and, when
present, the SciFact files ``<stem>_{full_depth,theta095}_beir_scifact.json`` written by
``benchmarks.evaluation.anchors`` in ``results/evaluation/`` (``<stem>`` is ``table6_<stage>`` unless given as ``stage:stem``).
Writes ``benchmarks/results/train_recipe/<name>.md`` and ``<name>.json``. No model is run here.
"""

from __future__ import annotations

import argparse
import json

from benchmarks._common import RESULTS, command_line, write_result

STAGES = RESULTS / "train_recipe"
SCIFACT = RESULTS / "evaluation"

TARGETS = {"exit_rate": 0.85, "expected_layers": 4.0, "stsb_exited": 0.80, "stsb_full": 0.81}


def scifact(stem: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {"ndcg10_full": None, "ndcg10_theta095": None, "doc_exit_rate_theta095": None}
    full = SCIFACT / f"{stem}_full_depth_beir_scifact.json"
    exited = SCIFACT / f"{stem}_theta095_beir_scifact.json"
    if full.exists():
        out["ndcg10_full"] = json.loads(full.read_text())["ndcg"]["NDCG@10"]
    if exited.exists():
        data = json.loads(exited.read_text())
        out["ndcg10_theta095"] = data["ndcg"]["NDCG@10"]
        out["doc_exit_rate_theta095"] = data["exit_stats"]["corpus"]["exit_rate"]
    return out


def collect(stages: list[str], theta: str) -> list[dict]:
    rows, steps, seconds = [], 0, 0.0
    for spec in stages:
        stage, _, stem = spec.partition(":")
        result = json.loads((STAGES / f"{stage}.json").read_text())
        info, metrics = result["run_info"], result["metrics"]
        cfg = info.get("config") or {}
        steps += int(info.get("steps") or 0)
        seconds += float(info.get("train_seconds") or 0.0)
        exits = metrics["exits"][theta]
        rows.append(
            {
                "stage": stage,
                "starts_from": cfg.get("model"),
                "data": cfg.get("data", "sentences") if cfg else "untrained",
                "max_seq_length": cfg.get("max_seq_length"),
                "stage_steps": int(info.get("steps") or 0),
                "cumulative_steps": steps,
                "cumulative_train_minutes": round(seconds / 60, 1),
                "exit_rate": exits["exit_rate"],
                "expected_layers": exits["expected_layers"],
                "stsb_exited": exits["stsb_exited"],
                "stsb_full": metrics["stsb_full"],
                "stsb_layers_3_5": metrics["stsb_per_layer"][2:5],
                "cos_to_final_3_5": metrics["cos_to_final_3_5"],
                **scifact(stem or f"table6_{stage}"),
            }
        )
    return rows


def markdown(name: str, rows: list[dict], theta: str, command: str) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x, digits=3):
        return "-" if x is None else f"{x:.{digits}f}"

    def data(r):
        return r["data"] if r["max_seq_length"] is None else f"{r['data']}, {r['max_seq_length']}"

    def ndcg(x):
        return "-" if x is None else f"{100 * x:.2f}"

    lines = [
        f"# {name}",
        "",
        f"Command: `{command}`",
        "",
        f"Each stage starts from the previous stage's model. STS-B test, theta={theta}, l_min=3, measured through the "
        "early-exit module's `encode` by `run.py`; SciFact NDCG@10 (x100) from `anchors.py` where it was run "
        f"('-' = not run). Targets (issue 3): exits >= {TARGETS['exit_rate']:.0%}, E[layers] <= "
        f"{TARGETS['expected_layers']}, STS-B exited >= {TARGETS['stsb_exited']}, full depth >= {TARGETS['stsb_full']}.",
        "",
        "| stage | data, max length | steps (cumulative) | train min (cumulative) | exits | E[layers] | STS-B exited "
        "| STS-B full | STS-B of L3 / L4 / L5 | cos to final L3-5 | SciFact full / theta | docs exiting |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['stage']}` | {data(r)} | {r['stage_steps']} ({r['cumulative_steps']}) "
            f"| {r['cumulative_train_minutes']} | {pct(r['exit_rate'])} | {num(r['expected_layers'], 2)} "
            f"| {num(r['stsb_exited'])} | {num(r['stsb_full'])} | {' / '.join(num(x) for x in r['stsb_layers_3_5'])} "
            f"| {num(r['cos_to_final_3_5'])} | {ndcg(r['ndcg10_full'])} / {ndcg(r['ndcg10_theta095'])} "
            f"| {pct(r['doc_exit_rate_theta095'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="+", help="result names of the stages, in training order (stage or stage:scifact_stem)")
    parser.add_argument("--name", required=True, help="output name under benchmarks/results/train_recipe/")
    parser.add_argument("--theta", default="0.95")
    args = parser.parse_args(argv)
    command = command_line("benchmarks.train_recipe.stages", argv)
    rows = collect(args.stages, args.theta)
    text = markdown(args.name, rows, args.theta, command)
    write_result(STAGES / args.name, {"command": command, "theta": args.theta, "targets": TARGETS, "stages": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
