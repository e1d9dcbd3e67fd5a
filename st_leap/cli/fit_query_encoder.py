"""``st-leap fit-query-encoder``: train a shallow query encoder for an index you keep, on its own documents."""

from __future__ import annotations

import argparse

from st_leap.cli.common import non_negative, open_fraction, positive_int


def query_kinds(text: str) -> list[str]:
    """``--kinds``: comma-separated kinds of query-like text (title, sentence, span)."""
    from st_leap.corpus import QUERY_KINDS

    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in QUERY_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"--kinds takes a comma-separated subset of {','.join(QUERY_KINDS)}, got {text!r}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return list(dict.fromkeys(kinds))


def layer_list(text: str) -> list[int]:
    """``--layers``: comma-separated 0-based layer numbers in increasing order, e.g. ``0,3,5``."""
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        layers = []
    if not layers or any(i < 0 for i in layers) or layers != sorted(set(layers)):
        raise argparse.ArgumentTypeError(
            f"--layers takes distinct 0-based layer numbers in increasing order, e.g. 0,3,5; got {text!r}")
    return layers


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from error
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fit-query-encoder",
        help="Train a shallow query encoder for an index you keep, on that index's documents (no queries needed).",
        description=(
            "Starts from DEPTH layers of INDEX_MODEL (the model that embedded your documents; by default spread from "
            "its first to its last layer), trains them on "
            "query-like texts of the corpus (titles, sentences, short spans) toward the index model's embedding of "
            "the same text and toward their own document in the index, and saves one model to --out: "
            "encode_query runs the shallow encoder, encode_document the index model unchanged. Documents held out "
            "of training give the dev signal; no query set or qrels is read (past queries, if you keep a log, can "
            "train beside the documents: --queries). The default budget (1,000 steps of 64 texts) "
            "fits in about half an hour on 2 CPU cores for 5,000 documents (SciFact: 11 minutes of training, 4 for "
            "the index model's pass over the documents, about 6 for its pass over the training texts; both passes "
            "are cached, and --document-embeddings skips the first). For an index model 768 wide or more "
            "(all-mpnet-base-v2) the default is 1,500 steps on 32,000 texts, each seen three times: its pass over "
            "the training texts is the cost (about 21 minutes; SciFact: 48 minutes for its pass over the documents, "
            "once; 30 minutes of training). Resume a stopped run with --resume."
        ),
    )
    parser.add_argument("index_model", metavar="INDEX_MODEL",
                        help="The model that built your index: a folder, a Hub id, or minilm / mpnet")
    parser.add_argument("--corpus", required=True,
                        help="The index's documents: a BEIR folder, a corpus.jsonl(.gz), or a text file of one document "
                        "per line (a document with an empty title and text stays in the index but gives no training text)")
    parser.add_argument("--depth", type=positive_int, default=None,
                        help="Layers of the query encoder (default 3, or as many as --layers names)")
    parser.add_argument("--out", required=True, help="Folder of the finished model")
    parser.add_argument("--init", choices=("spread", "first", "leap"), default="spread",
                        help="Start from DEPTH layers of INDEX_MODEL spread from its first to its last (default: it "
                             "won on the dev split), its first DEPTH layers, or the whole stack trained at every "
                             "depth (leap: served at DEPTH, can exit per sample)")
    parser.add_argument("--layers", type=layer_list, default=None,
                        help="Start from these 0-based layers of INDEX_MODEL (or of --student) instead of --init's "
                             "pick, DEPTH of them in increasing order, e.g. 0,2,5 (spread picks 0,3,5 of 6)")
    parser.add_argument("--student", default=None,
                        help="Start the query encoder from another, smaller model instead of INDEX_MODEL's layers "
                             "(a folder, a Hub id, or minilm / mpnet): e.g. minilm for an mpnet index; its exit map "
                             "maps its width into the index's")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="The step budget (default 1,000 steps of 64 texts; 1,500 when the index model is 768 wide "
                             "or more, on 500 steps' worth of texts: its pass over the training texts is then the cost)")
    parser.add_argument("--stop-at-step", type=positive_int, default=None,
                        help="Stop after N steps of the --max-steps schedule (continue later with --resume)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--train-texts", type=positive_int, default=None,
                        help="Query-like texts to train on (default: the step budget's worth, steps x batch; at "
                             "most 500 steps' worth for an index model 768 wide or more). Fewer "
                             "repeat in epochs, so a longer --max-steps on the same texts pays no new pass of the "
                             "index model over them (cached): the cheap way to train longer for a 12-layer index")
    parser.add_argument("--document-embeddings", default=None,
                        help="Your index's vectors, read straight from where you keep them: an .npz with 'ids' and "
                             "'embeddings'; an .npy in corpus order; a FAISS index file (pip install faiss-cpu; an "
                             "IndexIDMap's int64 ids are matched to integer corpus ids, else they must be corpus "
                             "positions; an index without ids holds one row per document, in corpus order); or a "
                             "LanceDB table (pip install lancedb) as DB_FOLDER::TABLE or DB_FOLDER/TABLE.lance, with "
                             "?id=COLUMN&vector=COLUMN when its columns are not named id and vector")
    parser.add_argument("--dev-documents", type=positive_int, default=200, help="Documents held out for the dev signal")
    parser.add_argument("--eval-steps", type=positive_int, default=250, help="Dev evaluation every N steps")
    parser.add_argument("--work-dir", default=None, help="Checkpoints and the trained student (default: OUT-training)")
    parser.add_argument("--resume", action="store_true", help="Continue from the newest checkpoint in the work dir")
    parser.add_argument("--train-seed", type=int, default=42,
                        help="Seed of the training (batch order, dropout); the dev split and the texts stay those of "
                             "the fixed data seed, so runs that differ only here compare on the same dev split")
    parser.add_argument("--kinds", type=query_kinds, default=None,
                        help="Which query-like texts to train on, comma-separated from title,sentence,span (default: "
                             "all three)")
    levers = parser.add_argument_group(
        "training levers", "Off by default (the defaults train exactly as before); measure them on the dev split "
        "before you keep one.")
    levers.add_argument("--distill-weight", type=non_negative, default=1.0,
                        help="Weight of the distillation loss (texts toward the index model's embedding of the same "
                             "text; default 1). 0 drops it: retrieval alone")
    levers.add_argument("--retrieval-weight", type=non_negative, default=1.0,
                        help="Weight of the retrieval loss (texts toward their own document; default 1). 0 drops "
                             "it: distillation alone. Both 0 is an error")
    levers.add_argument("--hard-negatives", type=non_negative_int, default=0,
                        help="Hard-negative documents per text, mined from your index (default 0: the other "
                             "documents of the batch only)")
    levers.add_argument("--negatives-from", choices=("query", "document"), default="query",
                        help="Mine them near the index model's embedding of the text (query, default) or near the "
                             "text's own document (document)")
    levers.add_argument("--negatives-skip", type=non_negative_int, default=None,
                        help="Nearest ranks skipped after the own document, as likely false negatives (default 5)")
    levers.add_argument("--negatives-pool", type=positive_int, default=None,
                        help="Ranks after the skipped ones that the hard negatives are drawn from (default 50)")
    levers.add_argument("--soft-weight", type=non_negative, default=0.0,
                        help="Weight of a KL term toward the index model's scores of the text over the batch's "
                             "candidate documents (default 0: off)")
    parser.add_argument("--queries", default=None,
                        help="Past queries of your index, if you keep a log (no labels needed): a text file of one "
                             "query a line, or a queries.jsonl. They train beside the documents' texts, toward the "
                             "index model's embedding of the same query")
    parser.add_argument("--query-fraction", type=open_fraction, default=None,
                        help="Share of training batches drawn from --queries (default 0.5)")
    return parser


def run(args: argparse.Namespace) -> int:
    from st_leap.corpus import read_corpus

    read_corpus(args.corpus)  # before any model loads: a bad corpus fails fast, naming the file and line
    from st_leap.query_encoder import fit_query_encoder

    depth = args.depth or (len(args.layers) if args.layers else 3)
    result = fit_query_encoder(
        args.index_model, args.corpus, args.out, depth=depth, init=args.init, layers=args.layers,
        student=args.student,
        max_steps=args.max_steps,
        stop_at_step=args.stop_at_step, batch_size=args.batch_size, learning_rate=args.learning_rate,
        train_texts=args.train_texts, document_embeddings=args.document_embeddings, dev_documents=args.dev_documents,
        eval_steps=args.eval_steps,
        work_dir=args.work_dir, resume=args.resume, train_seed=args.train_seed, distill_weight=args.distill_weight,
        retrieval_weight=args.retrieval_weight, hard_negatives=args.hard_negatives, negatives_from=args.negatives_from,
        negatives_skip=args.negatives_skip, negatives_pool=args.negatives_pool, soft_weight=args.soft_weight,
        queries=args.queries, query_fraction=args.query_fraction,
        **({"kinds": args.kinds} if args.kinds is not None else {}),
    )
    dev = result.dev
    print(f"steps: {result.steps}; training {result.train_seconds / 60:.1f} min, index pass {result.index_seconds / 60:.1f} min")
    if result.empty_documents:
        print(f"empty documents: {result.empty_documents} (empty title and text: kept in the index, no training text)")
    print(f"dev (held-out documents): NDCG@10 {100 * dev['ndcg@10']:.2f} at depth {result.depth} "
          f"(index model at full depth {100 * dev['reference_ndcg@10']:.2f}); cosine to its query embedding "
          f"{dev['cosine']:.3f}; maps {result.maps}")
    print(f"wrote {result.path}: st_leap.load({result.path!r}) or SentenceTransformer({result.path!r}, "
          "trust_remote_code=True); encode_query runs the shallow encoder, encode_document the index model")
    return 0
