"""``st-leap monitor``: replay text files as traffic through a calibrated model with an
:class:`~st_leap.monitoring.ExitMonitor` (ours, after the paper's Appendix J step 5): per window E[layers], exit
rate, NN@10 overlap and cosine to full depth, alerts and fallback."""

from __future__ import annotations

import argparse
from pathlib import Path

from st_leap.cli.common import (
    add_model_argument,
    command_line,
    fallback_setting,
    fraction,
    hub_id_of,
    non_negative,
    plot_if_possible,
    positive_int,
)

DESCRIPTION = """Replay traffic through a calibrated model and watch its exits.

Each --stream (a text file, one text a line, or a .jsonl with a text field such as a BEIR queries.jsonl) is sent in
requests of --request-size texts, one stream after another, so that two streams replay a change of distribution.
The monitor keeps a window of --window texts per role; each text is re-encoded at full depth with probability
--sample-rate to measure its NN@10 overlap against the reference texts and its cosine to full depth. A window whose
mean exit layer is more than --max-layer-shift layers from the calibrated E[layers], or whose NN@10 overlap is more
than --max-nn-drop (relative) below the calibrated one, raises an alert; the role then serves --fallback until
--recover-windows consecutive windows are back within the tighter recovery bands.

The reference is the one `st-leap calibrate --save-model DIR` saved in DIR/st_leap_monitor/ (the model folder by
default, or --reference), or one measured here on --reference-texts at the model's setting. Prints one line per
window and writes monitor.json and monitor.png into --out. A query encoder for a kept index (st-leap
fit-query-encoder) is monitored on its query route, with the streams as query traffic.

example: st-leap monitor calibrated --stream usual_queries.txt --stream new_queries.jsonl --role query"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "monitor",
        help="Replay texts as traffic through a calibrated model: exit monitoring, drift alerts, fallback.",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument(
        "--stream",
        action="append",
        required=True,
        metavar="FILE",
        help="Traffic: a text file (one text a line) or a .jsonl with a text field; repeat to replay several in order",
    )
    parser.add_argument(
        "--role",
        choices=["query", "document", "default"],
        default=None,
        help="The role of the traffic (default: 'default', plain encode; 'query' for a query encoder for a kept "
        "index, whose query route is what can exit)",
    )
    parser.add_argument(
        "--reference", default=None, help="Folder holding the monitoring reference (default: the model folder)"
    )
    parser.add_argument(
        "--reference-texts", default=None, metavar="FILE", help="Measure the reference on these texts instead"
    )
    parser.add_argument("--window", type=positive_int, default=1000, help="Texts per window (default: %(default)s)")
    parser.add_argument(
        "--sample-rate",
        type=fraction,
        default=0.01,
        help="Share of texts re-encoded at full depth (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling (default: %(default)s)")
    parser.add_argument("--max-layer-shift", type=non_negative, default=1.0, help="Alert band, layers (default: 1)")
    parser.add_argument(
        "--max-nn-drop", type=fraction, default=0.2, help="Alert band, relative NN@10 drop (default: 0.2)"
    )
    parser.add_argument("--recover-layer-shift", type=non_negative, default=0.5, help="Recovery band (default: 0.5)")
    parser.add_argument("--recover-nn-drop", type=fraction, default=0.1, help="Recovery band (default: 0.1)")
    parser.add_argument(
        "--recover-windows", type=positive_int, default=3, help="Consecutive windows in band to recover (default: 3)"
    )
    parser.add_argument(
        "--fallback", type=fallback_setting, default="full", help="full, none (alert only) or a theta (default: full)"
    )
    parser.add_argument("--request-size", type=positive_int, default=32, help="Texts per request (default: 32)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--out", default="st_leap_monitor_run", help="Output folder (default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    from st_leap.evaluation.user_data import read_texts

    streams = [(path, read_texts(path).texts) for path in args.stream]  # before any model loads
    reference_texts = read_texts(args.reference_texts).texts if args.reference_texts else None

    from st_leap import from_pretrained, reporting, resources
    from st_leap.backends import query_side
    from st_leap.model import describe_routes, require_torch_encoder
    from st_leap.monitoring import ExitMonitor, build_reference, load_references

    model_path = resources.resolve_model(args.model)
    model = from_pretrained(model_path, base_model=hub_id_of(model_path))
    require_torch_encoder(model, "monitor")
    routes = describe_routes(model)
    if routes is not None:
        if args.role not in (None, "query"):
            raise ValueError(
                f"{args.model} is a query encoder for a kept index: its {args.role!r} traffic runs the index model, "
                "unchanged, which never exits. Monitor its query traffic (--role query), or the index model itself"
            )
        print(
            f"{args.model} is a query encoder for a kept index: monitoring its query route ({routes['query']}) on "
            "the streams as query traffic; documents run the index model, unchanged, and are not monitored.",
            flush=True,
        )
        model = query_side(model)
    role = "query" if routes is not None else args.role or "default"
    task = None if role == "default" else role
    if reference_texts is not None:
        reference = build_reference(model, reference_texts, task=task, batch_size=args.batch_size)
    else:
        reference = load_references(args.reference or model_path)
    monitor = ExitMonitor(
        model,
        reference,
        window=args.window,
        sample_rate=args.sample_rate,
        seed=args.seed,
        max_layer_shift=args.max_layer_shift,
        max_nn_drop=args.max_nn_drop,
        recover_layer_shift=args.recover_layer_shift,
        recover_nn_drop=args.recover_nn_drop,
        recover_windows=args.recover_windows,
        fallback=args.fallback,
        history=None,
    )
    role_reference = monitor.reference_for(task)
    if role_reference is None:
        raise ValueError(
            f"the reference holds the roles {sorted(monitor.references)}, none for {role!r}: calibrate that role "
            "(st-leap calibrate --role ... --save-model) or give --reference-texts"
        )
    print(reporting.monitor_table([], role_reference.nn_k))
    records: list[dict] = []
    for name, texts in streams:
        for start in range(0, len(texts), args.request_size):
            monitor.encode(texts[start : start + args.request_size], task=task, batch_size=args.batch_size)
            new = [{**record, "stream": name} for record in monitor.windows[len(records) :]]
            if new:
                print(reporting.monitor_table(new, role_reference.nn_k, header=False), flush=True)
            records += new
    snapshot = monitor.snapshot()
    result = {
        "model": hub_id_of(model_path) or args.model or "minilm",
        "model_path": model_path,
        "role": role,
        **({"monitored": "the query route of a query encoder for a kept index", "routes": routes} if routes else {}),
        "streams": [{"path": name, "num_texts": len(texts)} for name, texts in streams],
        "settings": {**snapshot["settings"], "request_size": args.request_size, "batch_size": args.batch_size},
        "reference": role_reference.to_dict(),
        "windows": records,
        "events": snapshot["events"],
        "roles": snapshot["roles"],
        "run_info": reporting.run_info(command=command_line()),
    }
    out = Path(args.out)
    json_path = reporting.write_json(result, out / "monitor.json")
    plotted = plot_if_possible(reporting.plot_monitor, result, out / "monitor.png")
    for event in result["events"]:
        print(f"{event['kind']}: {event['reason']}")
    print(
        f"\n{len(records)} window(s), {len(result['events'])} event(s); wrote {json_path}"
        + (f" and {out / 'monitor.png'}" if plotted else "")
    )
    return 0
