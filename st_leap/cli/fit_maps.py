"""``st-leap fit-maps``: fit exit maps (ours) in closed form from unlabeled texts and save the model with them."""

from __future__ import annotations

import argparse
from pathlib import Path

from st_leap.cli.common import add_model_argument, hub_id_of, positive_int, read_lines


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fit-maps",
        help="Fit one affine exit map per layer (closed form, unlabeled texts) and save the model with its maps.",
        description=(
            "Fits, for every layer, a ridge regression from the embedding the model computes at that layer to the "
            "final embedding of the model itself or of --target (the model that built your index). The ridge is "
            "chosen per layer on held-out texts. The model is saved to --out with its maps; a static cut "
            "(truncate_layers) or a per-sample exit then lands in the final space. Fit on texts like the ones the "
            "role will encode (short sentences for queries)."
        ),
    )
    add_model_argument(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--texts",
        help="Text file, one text per line (5,000 short texts: about 40 s on 2 CPU cores; 20,000: about 2.5 min)",
    )
    source.add_argument(
        "--corpus",
        help="The documents of your index instead: a BEIR folder, a corpus.jsonl(.gz), or a text file of one "
        "document per line; fits on query-like texts made of them (titles, sentences, short spans). For a shallow "
        "query encoder this keeps far more retrieval quality than generic texts",
    )
    parser.add_argument("--out", required=True, help="Folder to save the model with its exit maps")
    parser.add_argument("--target", default=None, help="Map into this model's final space (default: the model's own)")
    parser.add_argument("--max-texts", type=positive_int, default=None,
                        help="Use only the first N texts (with --corpus: N query-like texts, default 20,000)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    return parser


def run(args: argparse.Namespace) -> int:
    corpus = None
    if args.corpus is not None:  # before any model loads: a bad file fails fast, naming the line
        from st_leap.corpus import read_corpus

        corpus, texts = read_corpus(args.corpus), None
    else:
        texts = read_lines(args.texts, args.max_texts)
        from st_leap.exit_maps import MIN_FIT_TEXTS

        if not texts or len(texts) < MIN_FIT_TEXTS:
            raise ValueError(f"{args.texts}: needs at least {MIN_FIT_TEXTS} non-empty lines, found {len(texts or [])}")
    from sentence_transformers import SentenceTransformer

    from st_leap import from_pretrained, reporting, resources
    from st_leap.exit_maps import fit_exit_maps

    model_path = resources.resolve_model(args.model)
    model = from_pretrained(model_path, base_model=hub_id_of(model_path))
    target = None
    if args.target is not None:
        target_path = resources.resolve_model(args.target)
        target = SentenceTransformer(target_path, device=str(model.device))
    fit = fit_exit_maps(
        model, texts, target=target, corpus=corpus, max_corpus_texts=args.max_texts or 20_000,
        batch_size=args.batch_size,
        target_name=None if args.target is None else (hub_id_of(target_path) or args.target),
    )
    out = Path(args.out)
    reporting.save_model(model, out)
    report = {"model": args.model or "minilm", "texts": args.texts, "corpus": args.corpus, **fit.to_dict(),
              "run_info": reporting.run_info()}
    reporting.write_json(report, out / "exit_maps_fit.json")
    print(f"{'layer':>5}  {'ridge/n':>8}  {'held-out cos before':>19}  {'with map':>8}")
    for layer, row in fit.layers.items():
        before = "-" if row["heldout_cosine_before"] is None else f"{row['heldout_cosine_before']:.3f}"
        print(f"{layer:>5}  {row['ridge']:>8.0e}  {before:>19}  {row['heldout_cosine']:>8.3f}")
    print(f"\nwrote {out} (reload with st_leap.load({str(out)!r}); encode(..., truncate_layers=N) uses the maps)")
    return 0
