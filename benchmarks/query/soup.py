"""A uniform weight average ("model soup", Wortsman et al., 2022) of query encoders trained for one index.

The runs must share a start and a shape (``st-leap fit-query-encoder`` with the same index model, ``--init``,
``--layers`` and ``--depth``: every run then starts from the same copied layers; runs whose records name another
start are refused). The query side's weights (the transformer and its maps) are averaged tensor by tensor; the
document side is the index model's, untouched, and is copied from the first run; ``soup.json`` names the runs.
The soup is scored like any saved encoder, e.g. with ``benchmarks.query.corpus --phases eval --encoder``.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.query.soup --out runs/levers/scifact/soup4 runs/levers/scifact/d3 \\
        runs/levers/scifact/d3_hardneg3 runs/levers/scifact/d3_queries runs/levers/scifact/d3_queries_half
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def query_weight_files(run: Path) -> list[Path]:
    """The query side's weight files of a saved Router encoder, relative to the run."""
    return sorted(p.relative_to(run) for p in run.glob("query_*/model.safetensors"))


def start_of(run: Path) -> tuple | None:
    """What a run started from, by its ``query_encoder.json`` (``None`` without a record): the layers it started from
    (``start_layers``, given or picked), its depth, its student, and whether it kept the whole stack (``leap``).

    A record written before ``start_layers`` existed has only the layers given (``layers``): given, they are its
    start; not given (``None``: ``init``'s pick, which has changed between versions), its start is ``init``,
    ``depth`` and ``student``, which never equals a newer record's, so that runs whose starts cannot be told apart are
    refused rather than averaged."""
    record_path = run / "query_encoder.json"
    if not record_path.exists():
        return None
    record = json.loads(record_path.read_text())
    layers = record.get("start_layers")
    if layers is None and record.get("init") != "leap":
        layers = record.get("layers")  # given with --layers: the same start whichever version recorded it
    if layers is not None:
        return ("layers", record.get("init") == "leap", tuple(layers), record.get("depth"), record.get("student"))
    return ("init", record.get("init"), record.get("depth"), record.get("student"))


def soup(runs: list[Path], out: Path) -> Path:
    """Average the query-side weights of ``runs`` into a copy of the first run at ``out``."""
    if len(runs) < 2:
        raise ValueError("a soup needs at least two runs")
    files = query_weight_files(runs[0])
    if not files:
        raise ValueError(f"{runs[0]} has no query_*/model.safetensors: not a saved fit-query-encoder model")
    starts = {str(run): start_of(run) for run in runs}
    if len(set(starts.values())) > 1:
        raise ValueError(f"the runs did not share a start (their layers, depth and student): {starts}")
    for run in runs[1:]:
        if query_weight_files(run) != files:
            raise ValueError(f"{run} has other query modules than {runs[0]}: {query_weight_files(run)} vs {files}")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(runs[0], out)
    for name in files:
        tensors = [load_file(run / name) for run in runs]
        keys = tensors[0].keys()
        for run, state in zip(runs[1:], tensors[1:]):
            if state.keys() != keys or any(state[k].shape != tensors[0][k].shape for k in keys):
                raise ValueError(f"{run / name} differs in shape from {runs[0] / name}: the runs did not share a start")
        averaged = {}
        for key in keys:
            stacked = torch.stack([state[key] for state in tensors])
            averaged[key] = stacked.float().mean(0).to(stacked.dtype) if stacked.is_floating_point() else stacked[0]
        save_file(averaged, out / name, metadata={"format": "pt"})
    # The first run's training record (its dev curve, its steps) is not the soup's: the soup gets its own record, so
    # that readers of fit-query-encoder's record (benchmarks.query.inits, query_dev) never take it for a trained run.
    record = out / "query_encoder.json"
    depth = json.loads(record.read_text())["depth"] if record.exists() else None
    record.unlink(missing_ok=True)
    soup_record = {"path": str(out), "depth": depth, "soup": [str(run) for run in runs]}
    (out / "soup.json").write_text(json.dumps(soup_record, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="saved fit-query-encoder models with one start and depth")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    print(soup(args.runs, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
