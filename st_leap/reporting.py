"""Everything st_leap writes for a person to read: run metadata, JSON files, markdown tables and PNG plots.

The computing modules (:mod:`st_leap.diagnostics`, :mod:`st_leap.evaluation`) return plain dicts; this module
turns them into files. Files are written to a temporary name and renamed into place, so an interrupted run never
leaves a half-written file behind. Plots need matplotlib (``pip install st-leap[plot]``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

from st_leap.model import MODEL_DEFAULT

PACKAGES = ("st-leap", "sentence-transformers", "transformers", "torch", "mteb", "beir", "numpy", "scipy", "datasets")


# ------------------------------------------------------------------------------------------------ run metadata
def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_sha(path: str | Path | None = None) -> str | None:
    """The checkout's HEAD commit (``None`` outside git or before the first commit)."""
    cwd = Path(path) if path else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def run_info(command: str | Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """What every result JSON records: time, command, package versions, git sha, machine."""
    import torch

    if command is None:
        command = sys.argv
    if not isinstance(command, str):
        command = " ".join(str(c) for c in command)
    info = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "git_sha": git_sha(),
        "package_versions": package_versions(),
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "torch_num_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
    }
    info.update(extra)
    return info


# -------------------------------------------------------------------------------------------------------- files
def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is MODEL_DEFAULT:
        return "model-default"
    if callable(getattr(value, "to_dict", None)) and not isinstance(value, type):  # ExitStats, RoleReference
        return _jsonable(value.to_dict())
    return value


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed into place (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """``data`` as indented JSON (NaN -> null, numpy -> Python), written atomically."""
    return write_text(json.dumps(_jsonable(data), indent=2, ensure_ascii=False) + "\n", path)


def save_model(model: Any, path: str | Path) -> Path:
    """``model.save`` into a temporary folder beside ``path``, then moved into place, so that a run killed while
    saving never leaves a folder that loads as something else.

    A new folder is renamed into place in one step, and an existing folder is replaced only once the new copy is
    complete. A folder that also holds other things (a training run's ``checkpoints/``) keeps them: the old
    ``modules.json`` is removed first, each saved entry is renamed over its old version, and the new
    ``modules.json`` comes last. A save killed midway therefore leaves a folder that fails to load with an error
    naming the missing ``modules.json``, never a mix of two models.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not path.exists():
        tmp.rename(path)
        return path
    saved = {entry.name for entry in tmp.iterdir()}
    if {entry.name for entry in path.iterdir()} <= saved:  # nothing else in the folder: swap it whole
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path
    (path / "modules.json").unlink(missing_ok=True)
    for name in sorted(saved - {"modules.json"}) + (["modules.json"] if "modules.json" in saved else []):
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        (tmp / name).replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return path


def format_theta(theta: float | None) -> str:
    return "full" if theta is None else f"{theta:g}"


def point_label(row: dict[str, Any]) -> str:
    """An operating point as people read it: ``full``, ``theta=0.95``, ``static L3`` or ``theta=0.95 <= L4``."""
    truncate = row.get("truncate_layers")
    if row.get("theta") is None:
        return f"static L{truncate}" if truncate else "full"
    return f"theta={format_theta(row['theta'])}" + (f" <= L{truncate}" if truncate else "")


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


# ------------------------------------------------------------------------------------------ diagnose: text, plot
def diagnose_report(result: dict[str, Any], title: str = "") -> str:
    """The diagnostics of :func:`st_leap.diagnose` as a plain-text table."""
    num_layers = result["num_layers"]
    lines = [f"== st_leap diagnose {title}".rstrip(), ""]
    lines.append(f"{'layer':>5} {'cos to final':>13} {'cos(l, l-k)':>12} {'gamma_l':>8}")
    for layer in range(1, num_layers + 1):
        adj = result["adjacent_similarity"][layer - 1]
        gamma = result["contraction_ratio"][layer - 1] if layer < num_layers else None
        lines.append(
            f"{layer:>5} {result['similarity_to_final'][layer - 1]:>13.3f} "
            f"{'-' if adj is None else f'{adj:.3f}':>12} {'-' if gamma is None else f'{gamma:.3f}':>8}"
        )
    lines += ["", f"exit rule: k={result['exit_patience']}, l_min={result['exit_min_layer']}, {result['num_sentences']} sentences"]
    lines.append(f"{'theta':>6} {'exit rate':>10} {'E[layers]':>10} {'L/E[l]':>7} {'exited cos':>11}  exits per layer")
    for theta, row in result["thresholds"].items():
        sim = row["exited_similarity_to_final"]
        lines.append(
            f"{theta:>6} {row['exit_rate']:>10.1%} {row['expected_layers']:>10.2f} {row['layer_reduction']:>6.2f}x "
            f"{'-' if sim is None else f'{sim:.3f}':>11}  {row['counts']}"
        )
    if "monitoring_overhead" in result:
        mo = result["monitoring_overhead"]
        lines += [
            "",
            f"monitoring overhead: {mo['overhead']:+.1%} (check from layer 2, theta never fires; median of "
            f"{mo['repeats']} interleaved runs, {mo['num_sentences']} sentences, batch {mo['batch_size']}, "
            f"{mo['torch_threads']} threads)",
        ]
    verdict = result["verdict"]
    lines += ["", "verdict: " + ("EXIT-COMPATIBLE" if verdict["exit_compatible"] else "NOT exit-compatible")]
    for name, check in verdict["checks"].items():
        value = check["value"]
        shown = json.dumps(value) if isinstance(value, dict) else ("-" if value is None else f"{value:.3f}")
        lines.append(f"  [{'ok' if check['passed'] else 'FAIL'}] {name}: {shown}  ({check['rule']})")
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or an ImportError that says how to install it."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("Plots need matplotlib: pip install 'st-leap[plot]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG (through a temporary name, renamed into place) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    pyplot().close(fig)
    return path


def plot_diagnose(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Similarity-to-final and adjacent-cosine curves, and the exit-layer histogram per threshold, as a PNG."""
    plt = pyplot()
    num_layers = result["num_layers"]
    layers = list(range(1, num_layers + 1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(layers, result["similarity_to_final"], marker="o", label="cos(p_l, p_L)")
    adj = [(layer, v) for layer, v in zip(layers, result["adjacent_similarity"]) if v is not None]
    left.plot([a for a, _ in adj], [v for _, v in adj], marker="s", label=f"cos(p_l, p_l-{result['exit_patience']})")
    for theta in result["thresholds"]:
        left.axhline(float(theta), color="grey", lw=0.6, ls=":")
    left.axvline(result["exit_min_layer"], color="red", lw=0.8, ls="--", label="l_min")
    left.set(xlabel="layer", ylabel="mean cosine", title="Similarity by layer", xticks=layers)
    left.legend(fontsize=8)
    width = 0.8 / max(1, len(result["thresholds"]))
    for i, (theta, row) in enumerate(result["thresholds"].items()):
        share = [c / max(1, row["num_samples"]) for c in row["counts"]]
        right.bar([x + (i - (len(result["thresholds"]) - 1) / 2) * width for x in layers], share, width, label=f"θ={theta}")
    right.set(xlabel="exit layer", ylabel="share of samples", title="Exit-layer histogram", xticks=layers)
    right.legend(fontsize=8)
    fig.suptitle(title or "st_leap diagnose")
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------- sweeps: Pareto and decision
def pareto_markdown(full: dict[str, Any], rows: Sequence[dict[str, Any]], nn_k: int | None = None) -> list[str]:
    """The Pareto table (paper Tables 2, 5) of a full-depth row and one row per theta; the NN@k and measured
    speed-up columns appear when the rows have them."""
    with_nn = nn_k is not None and any("nn_at_k" in r for r in rows)
    with_speed = any(r.get("measured_speedup") for r in rows)
    header = "| operating point | STS-B | delta | E[layers] | layer reduction | layers saved | exit rate |"
    align = "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    if with_nn:
        header, align = header + f" NN@{nn_k} |", align + " ---: |"
    header, align = header + " Pareto |", align + " --- |"
    if with_speed:
        header, align = header + " measured speed-up |", align + " ---: |"
    lines = [header, align]
    for row in [full, *rows]:
        cells = [
            point_label(row),
            f"{row['stsb']:.2f}",
            f"{row['delta']:+.2f}",
            f"{row['expected_layers']:.3f}",
            f"{row['layer_reduction']:.3f}x",
            f"{100 * row['layers_saved']:.1f}%",
            f"{100 * row['exit_rate']:.1f}%",
        ]
        if with_nn:
            cells.append(_fmt(row.get("nn_at_k"), ".3f"))
        cells.append("yes" if row.get("pareto") else ("" if row is full else "no"))
        if with_speed:
            speedup = row.get("measured_speedup")
            cells.append(f"{_fmt(speedup, '.2f')}{'x' if speedup else ''}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def decision_markdown(decision: Sequence[dict[str, Any]]) -> list[str]:
    """The decision table (paper Table 8): the threshold each quality budget picks."""
    lines = [
        "| max STS-B drop | operating point | STS-B | delta | E[layers] | layer reduction | exit rate |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in decision:
        lines.append(
            f"| {row['max_quality_drop']:g} | {point_label(row)} | {row['stsb']:.2f} | {row['delta']:+.2f} | "
            f"{row['expected_layers']:.3f} | {row['layer_reduction']:.3f}x | {100 * row['exit_rate']:.1f}% |"
        )
    return lines


def sweep_markdown(result: dict[str, Any]) -> str:
    """Pareto table, exit-layer distribution, NN@k table and decision table of a theta sweep."""
    full, rows, k = result["full"], result["rows"], result.get("nn_k", 10)
    depth = result["num_layers"]
    lines = [
        f"# theta sweep: {result['model']} on STS-B {result['split']}",
        "",
        f"{result['num_pairs']} pairs, {result['num_sentences']} distinct sentences; L = {depth}, "
        f"patience k = {result['exit_patience']}, l_min = {result['exit_min_layer']}.",
        "",
    ]
    if result["run_info"].get("command"):
        lines += [f"Command: `{result['run_info']['command']}`", ""]
    lines += ["## Pareto table (paper Tables 2, 5)", "", *pareto_markdown(full, rows, nn_k=k)]
    lines += [
        "",
        "## Exit-layer distribution (share of sentences stopping after each layer)",
        "",
        "| operating point | " + " | ".join(f"L{i}" for i in range(1, depth + 1)) + " |",
        "| --- | " + " | ".join("---:" for _ in range(depth)) + " |",
    ]
    for row in [full, *rows]:
        n = sum(row["distribution"]) or 1
        lines.append(
            f"| {point_label(row)} | " + " | ".join(f"{100 * c / n:.1f}%" for c in row["distribution"]) + " |"
        )
    lines += [
        "",
        f"## NN@{k} failure rates per exit layer (paper Tables 4, 13)",
        "",
        f"Share of sentences whose {k} nearest neighbours (early-exit index) keep fewer than 50% / 30% of their "
        "full-depth neighbours.",
        "",
        f"| operating point | exit layer | n | mean NN@{k} | NN@{k} < 0.5 | NN@{k} < 0.3 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        overall = row["nn_failure_rates"]
        lines.append(
            f"| {point_label(row)} | all | {sum(row['distribution'])} | {_fmt(row['nn_at_k'], '.3f')} | "
            f"{100 * overall['<0.5']:.1f}% | {100 * overall['<0.3']:.1f}% |"
        )
        for layer in row["nn_per_layer"]:
            if layer["n"]:
                lines.append(
                    f"| | {layer['layer']} | {layer['n']} | {_fmt(layer['mean'], '.3f')} | "
                    f"{100 * layer['failure_rates']['<0.5']:.1f}% | {100 * layer['failure_rates']['<0.3']:.1f}% |"
                )
    lines += [
        "",
        "## Decision table (paper Table 8): largest layer reduction within a quality budget",
        "",
        *decision_markdown(result["decision"]),
    ]
    return "\n".join(lines) + "\n"


def plot_sweep(result: dict[str, Any], path: str | Path) -> Path:
    """PNG: STS-B vs layer reduction per theta (left), exit rate and E[layers] per theta (right)."""
    plt = pyplot()
    full, rows = result["full"], result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    adaptive = [r for r in rows if r["theta"] is not None]
    static = [r for r in rows if r["theta"] is None]
    left.plot([r["layer_reduction"] for r in adaptive], [r["stsb"] for r in adaptive], "o-", label="early exit")
    if static:
        left.plot([r["layer_reduction"] for r in static], [r["stsb"] for r in static], "s--", label="static depth")
    for r in rows:
        left.annotate(point_label(r), (r["layer_reduction"], r["stsb"]), textcoords="offset points", xytext=(4, 4))
    left.scatter([1.0], [full["stsb"]], marker="*", s=150, color="black", zorder=3, label="full depth")
    left.set_xlabel("layer reduction L / E[layers]")
    left.set_ylabel(f"STS-B {result['split']} cosine Spearman x100")
    left.set_title(f"{result['model']}: quality vs speed-up")
    left.legend()
    thetas = [r["theta"] for r in adaptive]
    right.plot(thetas, [100 * r["exit_rate"] for r in adaptive], "o-", color="tab:red", label="exit rate (%)")
    right.set_xlabel("theta")
    right.set_ylabel("exit rate (%)", color="tab:red")
    twin = right.twinx()
    twin.plot(thetas, [r["expected_layers"] for r in adaptive], "s--", color="tab:blue", label="E[layers]")
    twin.set_ylabel("E[layers]", color="tab:blue")
    twin.set_ylim(0, result["num_layers"] + 0.5)
    right.set_title("exit rate and E[layers] per theta")
    fig.tight_layout()
    return save_figure(fig, path)


def write_sweep_report(result: dict[str, Any], out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``."""
    out = Path(out_dir)
    return {
        "json": write_json(result, out / f"{stem}.json"),
        "md": write_text(sweep_markdown(result), out / f"{stem}.md"),
        "png": plot_sweep(result, out / f"{stem}.png"),
    }


def evaluate_markdown(result: dict[str, Any]) -> str:
    """Per-threshold scores of ``st-leap evaluate``, and the Pareto and decision tables when STS-B ran."""
    tasks = list(result["runs"][0]["tasks"]) if result["runs"] else []
    lines = [
        f"# st-leap evaluate: {result['model']} ({result['backend']})",
        "",
        f"Command: `{result['run_info']['command']}`",
        "",
    ]
    if result.get("routes"):  # a query encoder for a kept index: one run, as saved, layers per role
        lines += [
            "A query encoder for a kept index, evaluated as saved: "
            f"{result['routes']['query']}; {result['routes']['document']}. mteb encodes retrieval queries with "
            "encode_query, documents with encode_document and STS pairs with plain encode (the index model).",
            "",
            "| task | metric | score | E[layers] queries | E[layers] documents / plain encode |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for run in result["runs"]:
            for t in tasks:
                row = run["tasks"][t]
                by_role = row.get("exit_stats_by_role", {})
                query = by_role.get("query", {}).get("expected_layers")
                other = [by_role[role]["expected_layers"] for role in ("document", "default") if role in by_role]
                cells = [f"{query:.3f}" if query is not None else "-", " / ".join(f"{v:.3f}" for v in other) or "-"]
                lines.append(f"| {t} | {row['metric']} | {row['score']:.2f} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    lines += [
        "| theta | " + " | ".join(f"{t} | E[layers] | exit rate" for t in tasks) + " |",
        "| --- | " + " | ".join("---: | ---: | ---:" for _ in tasks) + " |",
    ]
    for run in result["runs"]:
        cells = []
        for t in tasks:
            row = run["tasks"][t]
            cells.append(
                f"{row['score']:.2f} | {row['exit_stats']['expected_layers']:.3f} | "
                f"{100 * row['exit_stats']['exit_rate']:.1f}%"
            )
        lines.append(f"| {format_theta(run['theta'])} | " + " | ".join(cells) + " |")
    if "rows" in result:
        lines += ["", "## Pareto table (STS-B test)", "", *pareto_markdown(result["full"], result["rows"])]
        lines += ["", "## Decision table", "", *decision_markdown(result["decision"])]
    return "\n".join(lines) + "\n"


def operating_points_table(table: dict[str, list[dict[str, Any]]]) -> str:
    """The demo's before/after table: one block of :func:`~st_leap.evaluation.sweep.timed_operating_points` rows
    per model."""
    lines = [f"{'model':<9} {'setting':<11} {'exit rate':>9} {'E[layers]':>9} {'L/E[l]':>7} {'measured':>9} {'STS-B':>7}"]
    for name, rows in table.items():
        for r in rows:
            lines.append(
                f"{name:<9} {r['setting']:<11} {r['exit_rate']:>9.1%} {r['expected_layers']:>9.2f} "
                f"{r['layer_reduction']:>6.2f}x {r['speedup']:>8.2f}x {r['stsb']:>7.4f}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- monitor: table, plot
def monitor_table(records: Sequence[dict[str, Any]], nn_k: int = 10, header: bool = True) -> str:
    """One line per closed window of an :class:`~st_leap.monitoring.ExitMonitor` (``monitor.windows``, each with an
    optional ``stream``): E[layers], exit rate, NN@k overlap, cosine, the signals out of band, fallback."""
    lines = []
    if header:
        lines.append(
            f"{'window':>6}  {'stream':<18} {'role':<8} {'texts':>6} {'E[layers]':>9} {'exit rate':>9} "
            f"{'NN@' + str(nn_k):>7} {'cosine':>7}  {'alert':<26} fallback"
        )
    for r in records:
        rate = r.get("exit_rate")
        lines.append(
            f"{r['window']:>6}  {Path(str(r.get('stream', '-'))).name[:18]:<18} {r['role']:<8} {r['num_texts']:>6} "
            f"{_fmt(r.get('expected_layers')):>9} {'-' if rate is None else f'{100 * rate:.1f}%':>9} "
            f"{_fmt(r.get('nn_overlap'), '.3f'):>7} {_fmt(r.get('cosine'), '.3f'):>7}  "
            f"{', '.join(r.get('alert') or []) or '-':<26} {'yes' if r.get('fallback') else 'no'}"
        )
    return "\n".join(lines)


def plot_monitor(result: dict[str, Any], path: str | Path) -> Path:
    """PNG of an ``st-leap monitor`` replay: per window the mean exit layer (top) and the NN@k overlap (bottom)
    against the calibrated values and their alert bands, fallback windows shaded, alerts marked, one section per
    stream. A signal's alert is marked on its own panel; windows are numbered as ``st-leap monitor`` prints them."""
    plt = pyplot()
    records, reference, settings = result["windows"], result["reference"], result["settings"]
    x = list(range(len(records)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    series = (
        (top, "expected_layers", "mean_exit_layer", "mean exit layer", reference["expected_layers"],
         settings["max_layer_shift"], True),
        (bottom, "nn_overlap", "nn_overlap", f"NN@{reference['nn_k']} overlap", reference["nn_overlap"],
         settings["max_nn_drop"], False),
    )
    for ax, key, signal, label, ref, band, absolute in series:
        points = [(i, r[key]) for i, r in zip(x, records) if r.get(key) is not None]
        ax.plot([i for i, _ in points], [v for _, v in points], "o-", ms=3, label=label)
        ax.axhline(ref, color="black", lw=0.8, label="calibrated")
        if absolute:
            ax.axhspan(ref - band, ref + band, color="green", alpha=0.08, label=f"alert band (+/- {band:g})")
        else:
            ax.axhline(ref * (1 - band), color="red", lw=0.8, ls="--", label=f"alert below (-{100 * band:g}%)")
        alerts = [(i, r[key]) for i, r in zip(x, records) if signal in (r.get("alert") or []) and r.get(key) is not None]
        ax.scatter([i for i, _ in alerts], [v for _, v in alerts], marker="x", s=60, color="red", zorder=3, label="alert")
        for i, r in zip(x, records):
            if r.get("fallback"):
                ax.axvspan(i - 0.5, i + 0.5, color="orange", alpha=0.15, lw=0)
        ax.set_ylabel(label)
    streams = [r.get("stream") for r in records]
    for i in range(1, len(streams)):
        if streams[i] != streams[i - 1]:
            for ax in (top, bottom):
                ax.axvline(i - 0.5, color="grey", lw=0.8, ls=":")
    top.legend(fontsize=8, loc="best")
    top.set_title(f"{result.get('model', 'model')}, role {result.get('role', 'default')}: per window (orange: fallback)")
    bottom.set_xlabel("window")
    fig.tight_layout()
    return save_figure(fig, path)
