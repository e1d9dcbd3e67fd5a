"""A shallow query encoder trained for an index you keep, on that index's own documents (ours, not the LEAP paper's).

:func:`fit_query_encoder` (``st-leap fit-query-encoder``) builds it from st_leap's existing pieces:

1. the student: ``depth`` layers of the index model itself (spread across the stack from the first to the last,
   ``init="spread"``, the default, which won on the corpus dev split; or its first ones, ``init="first"``), or of
   another, smaller model (``student=``: a small student for a big index, e.g. all-MiniLM-L6-v2 for an
   all-mpnet-base-v2 index), with a closed-form exit map from its output into the index model's space (of the
   index's width) fitted on the corpus (:func:`st_leap.fit_exit_maps`);
2. training with :func:`st_leap.training.train` on the corpus (a config's ``corpus`` key): query-like texts of the
   training documents toward the index model's embedding of the same text (:class:`~st_leap.losses.LEAPLoss`, its
   final cosine and in-batch similarity terms, read through the map) and toward their own document among the index
   model's document embeddings (:class:`~st_leap.losses.QueryRetrievalLoss`), with checkpoints and resume; the dev
   signal comes from held-out documents of the corpus only;
3. the map refitted in closed form on the trained student, kept only if the dev signal says so;
4. one sentence-transformers model with a ``Router``: ``encode_query`` runs the student, ``encode_document`` (and
   plain ``encode``) the index model, unchanged. It loads with ``SentenceTransformer(DIR)`` or
   ``st_leap.load(DIR)``; ``st-leap export DIR`` exports one graph per route (``--role query``: the query side alone).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Router

from st_leap import resources
from st_leap.corpus import QUERY_KINDS, read_corpus, read_document_embeddings, read_queries
from st_leap.reporting import save_model, write_json

logger = logging.getLogger(__name__)

#: The initialisations of the student: which layers of the index model it starts from. ``"leap"`` keeps them all
#: and trains every depth (LEAP), so that queries can also exit per sample.
INITS = ("first", "spread", "leap")

#: The loss of the student: LEAPLoss's final cosine and in-batch similarity terms only (the student has no early
#: exits to train), read through its exit map into the index model's space.
STUDENT_LOSS = {
    "final_weight": 1.0, "intermediate_weight": 0.0, "exit_weight": 0.0, "student_weight": 0.0,
    "contrastive_weight": 1.0, "contrastive_layers": "final", "late_weight": 0.0, "redundancy_weight": 0.0,
    "anchor_weight": 0.0, "adjacent_weight": 0.0, "use_exit_maps": True,
}

#: The loss of the ``"leap"`` student: LEAPLoss's recipe at every depth, read through the exit maps, plus the
#: in-batch similarity term on the final layer.
LEAP_STUDENT_LOSS = {"contrastive_weight": 1.0, "contrastive_layers": "final", "use_exit_maps": True}

#: The term weights of LEAPLoss (``<term>_weight``); ``distill_weight`` scales them all.
LEAP_TERMS = ("final", "intermediate", "exit", "contrastive", "late", "redundancy", "anchor", "adjacent")


#: The step budget (of 64 texts) of :func:`fit_query_encoder` for an index model narrower than
#: :data:`WIDE_INDEX_HIDDEN` (all-MiniLM-L6-v2: about half an hour on 2 CPU cores for 5,000 documents).
DEFAULT_STEPS = 1000
#: The step budget for an index model :data:`WIDE_INDEX_HIDDEN` wide or more (BERT-base, all-mpnet-base-v2): its pass
#: over the training texts, not the training, is the cost of a run (all-mpnet-base-v2 embeds about 25 short texts a
#: second on 2 cores: 21 minutes for 32,000, ``benchmarks/results/query/mpnet_pass_timing.md``), so it gets fewer
#: texts, :data:`WIDE_INDEX_TEXT_STEPS` steps' worth, seen three times: chosen on both corpora's dev splits against
#: 500 steps on the same texts (``benchmarks/results/query/mpnet_corpus.md``).
WIDE_INDEX_STEPS = 1500
#: How many steps' worth of texts (times the batch size) a wide index model's run trains on by default.
WIDE_INDEX_TEXT_STEPS = 500
WIDE_INDEX_HIDDEN = 768


def default_max_steps(index_model: str) -> int:
    """The step budget of :func:`fit_query_encoder` for ``index_model`` (folder, Hub id, or ``"minilm"`` /
    ``"mpnet"``): :data:`WIDE_INDEX_STEPS` when its transformer is :data:`WIDE_INDEX_HIDDEN` wide or more (read from
    its config; no weights are loaded), else :data:`DEFAULT_STEPS`."""
    return WIDE_INDEX_STEPS if _is_wide(index_model) else DEFAULT_STEPS


def default_train_texts(index_model: str, max_steps: int, batch_size: int) -> int | None:
    """How many texts :func:`fit_query_encoder` trains on by default: for an index model :data:`WIDE_INDEX_HIDDEN`
    wide or more, :data:`WIDE_INDEX_TEXT_STEPS` steps' worth at most (its pass over them is the cost of a run; a
    longer schedule repeats them); else ``None``, the step budget's worth."""
    return min(max_steps, WIDE_INDEX_TEXT_STEPS) * batch_size if _is_wide(index_model) else None


def _is_wide(index_model: str) -> bool:
    config = _model_config(resources.resolve_model(index_model))
    if config is None:  # no readable config: the default budget
        return False
    width = getattr(config, "hidden_size", None) or getattr(config, "dim", None)  # DistilBERT names it ``dim``
    return isinstance(width, int) and width >= WIDE_INDEX_HIDDEN


def _model_config(path: str) -> Any:
    """A model's transformers config, read without its weights; ``None`` when none can be read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None


def student_loss(leap: bool, distill_weight: float = 1.0) -> dict[str, Any]:
    """The LEAPLoss settings of the student (:data:`STUDENT_LOSS`, or :data:`LEAP_STUDENT_LOSS` for the ``"leap"``
    init) with every term weight times ``distill_weight``: the distillation loss scaled as a whole (for
    :data:`STUDENT_LOSS` its final and contrastive weights, the only ones above 0). 1 gives the dicts unchanged."""
    base = dict(LEAP_STUDENT_LOSS if leap else STUDENT_LOSS)
    if distill_weight == 1.0:
        return base
    from st_leap.losses.leap import LEAPSettings

    defaults = LEAPSettings.from_preset(base.get("preset", "recipe"))
    for term in LEAP_TERMS:
        weight = base.get(f"{term}_weight", getattr(defaults, f"{term}_weight"))
        if weight:
            base[f"{term}_weight"] = float(weight) * float(distill_weight)
    return base


def _weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def retrieval_settings(
    leap: bool,
    depth: int,
    *,
    retrieval_weight: float = 1.0,
    distill_weight: float = 1.0,
    hard_negatives: int = 0,
    negatives_from: str = "query",
    negatives_skip: int | None = None,
    negatives_pool: int | None = None,
    soft_weight: float = 0.0,
    soft_scale: float = 20.0,
) -> dict[str, Any] | None:
    """The ``retrieval`` key of the student's :class:`~st_leap.training.TrainConfig`: None when
    ``retrieval_weight`` is 0 (distillation alone); otherwise today's settings, plus only the levers that differ
    from their defaults, so that a default run's config (and its training) is what it was."""
    if retrieval_weight == 0:
        return None
    settings: dict[str, Any] = {"scale": 20.0} if leap else {"layers": [depth], "scale": 20.0}  # "leap": every depth
    if retrieval_weight != 1.0:
        settings["weight"] = float(retrieval_weight)
    if distill_weight == 0:
        settings["distill"] = False  # retrieval alone
    if hard_negatives:
        settings["hard_negatives"] = hard_negatives
        settings["negatives_from"] = negatives_from
        if negatives_skip is not None:
            settings["negatives_skip"] = negatives_skip
        if negatives_pool is not None:
            settings["negatives_pool"] = negatives_pool
    if soft_weight:
        settings["soft_weight"] = float(soft_weight)
        settings["soft_scale"] = float(soft_scale)
    return settings


def pick_layers(num_layers: int, depth: int, init: str = "first") -> list[int]:
    """The 0-based layers of an ``num_layers``-layer encoder a ``depth``-layer student starts from: the first
    ``depth`` (``"first"``), ``depth`` layers spread evenly from the first to the last (``"spread"``; a layer halfway
    between two goes to the deeper one: 0, 3 and 5 of 6 at depth 3, which won on both collections' dev splits against
    0, 2 and 5), or all of them (``"leap"``: the student keeps the whole stack and serves ``depth`` of it)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= num_layers:
        raise ValueError(f"depth must be an int in 1..{num_layers}, got {depth!r}")
    if init == "leap":
        return list(range(num_layers))
    if init == "first" or depth == 1:
        return list(range(depth))
    # i * (num_layers - 1) / (depth - 1) rounded half up, in integers (Python's round() sends 2.5 to 2)
    return sorted({(2 * i * (num_layers - 1) + depth - 1) // (2 * (depth - 1)) for i in range(depth)})


def check_layers(layers: Sequence[int], num_layers: int | None, depth: int) -> list[int]:
    """``layers`` as a list after checking it: ``depth`` distinct 0-based layers in increasing order, each below
    ``num_layers`` (``None``: not known yet, only the form is checked)."""
    keep = list(layers) if not isinstance(layers, (str, bytes)) else None
    if (keep is None or len(keep) != depth or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in keep)
            or keep != sorted(set(keep))):
        raise ValueError(f"layers must be {depth} distinct 0-based layer numbers in increasing order (one per layer of "
                         f"depth {depth}), got {layers!r}")
    if num_layers is not None and keep[-1] >= num_layers:
        raise ValueError(f"layers {keep}: the model has {num_layers} layers (0..{num_layers - 1})")
    return keep


def init_student(index_model: str, depth: int, init: str = "first", device: str | None = None,
                 layers: Sequence[int] | None = None) -> SentenceTransformer:
    """An early-exit model of ``depth`` layers taken from ``index_model`` (:func:`pick_layers`, or the 0-based
    ``layers`` given), with its pooling and normalization, full depth by default."""
    from torch import nn

    from st_leap.model import from_pretrained
    from st_leap.modules import encoder_layers

    model = SentenceTransformer(resources.resolve_model(index_model), device=device or "cpu")
    auto = model[0].auto_model
    stack = encoder_layers(auto)
    keep = check_layers(layers, len(stack), depth) if layers is not None else pick_layers(len(stack), depth, init)
    picked = nn.ModuleList([stack[i] for i in keep])
    parent = auto.transformer if hasattr(auto, "transformer") else auto.encoder
    parent.layer = picked
    for key in ("num_hidden_layers", "n_layers"):
        if hasattr(auto.config, key):
            setattr(auto.config, key, len(keep))
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        return from_pretrained(folder, exit_threshold=None, exit_min_layer=1, device=device)


def build_router(student: SentenceTransformer, index_model: SentenceTransformer) -> SentenceTransformer:
    """One model: ``encode_query`` -> ``student``, ``encode_document`` and plain ``encode`` -> ``index_model``."""
    router = Router.for_query_document(list(student), list(index_model), default_route="document")
    model = SentenceTransformer(modules=[router], device=str(index_model.device))
    model.model_card_data.base_model = getattr(index_model.model_card_data, "base_model", None)
    return model


@dataclass
class QueryEncoderResult:
    """What :func:`fit_query_encoder` did: where the model is, how long each part took (``train_seconds``: the whole
    schedule's training, a resumed run's earlier segments included, ``earlier_train_seconds`` of them; ``None`` when it
    did not resume or their record was not found), and its dev signal;
    ``empty_documents`` counts the corpus's documents with an empty title and text (in the index, no training text)
    and ``map_fit_texts`` the texts the closed-form maps were fitted on; ``layers`` the start's layers when given
    (``None``: ``init``'s pick) and ``start_layers`` the layers it started from, given or picked (``None`` when the
    start model's config does not say its depth)."""

    path: str
    student_path: str
    depth: int
    init: str
    steps: int
    train_seconds: float
    index_seconds: float
    student: str | None = None
    dev: dict[str, float] = field(default_factory=dict)
    maps: str = "trained"
    resumed_from: str | None = None
    earlier_train_seconds: float | None = None
    empty_documents: int = 0
    map_fit_texts: int = 0
    layers: list[int] | None = None
    start_layers: list[int] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dev_score(evaluator: Any, model: SentenceTransformer, depth: int) -> dict[str, float]:
    metrics = evaluator(model)
    prefix = f"{evaluator.name}_" if evaluator.name else ""
    return {"ndcg@10": metrics[f"{prefix}depth{depth}_ndcg@10"], "cosine": metrics[f"{prefix}depth{depth}_cosine"],
            "reference_ndcg@10": metrics[f"{prefix}reference_ndcg@10"]}


def fit_query_encoder(
    index_model: str,
    corpus: str | Path,
    out: str | Path,
    *,
    depth: int = 3,
    init: str = "spread",
    layers: Sequence[int] | None = None,
    student: str | None = None,
    max_steps: int | None = None,
    stop_at_step: int | None = None,
    batch_size: int = 64,
    learning_rate: float = 1e-4,
    train_texts: int | None = None,
    max_seq_length: int = 64,
    kinds: Sequence[str] = QUERY_KINDS,
    map_texts: int = 20_000,
    dev_documents: int = 200,
    dev_queries: int = 500,
    eval_steps: int | None = 250,
    document_embeddings: str | Path | np.ndarray | None = None,
    work_dir: str | Path | None = None,
    resume: bool = False,
    seed: int = 12345,
    train_seed: int = 42,
    distill_weight: float = 1.0,
    retrieval_weight: float = 1.0,
    hard_negatives: int = 0,
    negatives_from: str = "query",
    negatives_skip: int | None = None,
    negatives_pool: int | None = None,
    soft_weight: float = 0.0,
    soft_scale: float = 20.0,
    queries: str | Path | None = None,
    query_fraction: float | None = None,
) -> QueryEncoderResult:
    """Train a ``depth``-layer query encoder for an index that ``index_model`` built of ``corpus``, and save one
    model to ``out`` that serves queries with it and documents with ``index_model`` (see the module docstring).

    Documents with an empty title and text stay in the index (the index model embeds them, and they can be
    retrieved) but give no training, map-fitting or dev text; the result counts them (``empty_documents``).

    Args:
        index_model: The model that embedded your documents (folder, Hub id, or ``"minilm"`` / ``"mpnet"``).
        corpus: The documents of the index: a BEIR folder, a ``corpus.jsonl[.gz]`` or a text file of one document a
            line (:func:`st_leap.corpus.read_corpus`). Checked before any model loads.
        out: Folder of the finished model.
        depth: Layers of the query encoder.
        student: Another, smaller model to start the query encoder from (folder, Hub id, or ``"minilm"`` /
            ``"mpnet"``), e.g. all-MiniLM-L6-v2 (384 wide) for an all-mpnet-base-v2 index (768): its ``depth``
            layers (picked by ``init``) are trained into the index model's space through their exit map, which
            maps the student's width into the index's. Default: the index model's own layers.
        init: ``"spread"`` (``depth`` layers from the first to the last, :func:`pick_layers`; the default, chosen
            on the corpus dev split: ``benchmarks/results/query/inits.md``), ``"first"`` (the first ``depth``) or
            ``"leap"`` (the whole index model trained at every depth with LEAPLoss, served at ``depth``; queries can
            exit per sample instead with ``encode_query(..., truncate_layers=None, exit_threshold=...)``).
        layers: The 0-based layers of the index model (or of ``student``) to start from instead of ``init``'s pick:
            ``depth`` of them in increasing order, e.g. ``[0, 2, 5]`` of a 6-layer model (``"spread"`` picks
            ``[0, 3, 5]``). Not with ``init="leap"``, which keeps them all.
        max_steps: The step budget (the learning-rate schedule runs over it). Default: :func:`default_max_steps`
            (1,000; 1,500 for an index model 768 wide or more).
        stop_at_step: Stop after this many steps of the ``max_steps`` schedule (resume later with ``resume``).
        batch_size: Texts per step.
        learning_rate: Peak learning rate (linear schedule, 5% warm-up).
        train_texts: How many query-like texts to train on. Default: the step budget's worth (``max_steps *
            batch_size``, fewer when the documents give fewer); for an index model 768 wide or more at most 500
            steps' worth (:func:`default_train_texts`: 32,000 at 64 a batch, seen three times in the default 1,500
            steps). Fewer texts than the budget's worth repeat in epochs: the index model's pass over the texts is
            cached, so a longer schedule on the same ``train_texts`` pays no new pass (for a wide index model that
            pass is most of a run's cost).
        max_seq_length: Token length the query texts are trained at (queries are short).
        kinds: Which query-like texts to make of each document (:func:`st_leap.corpus.query_texts`).
        map_texts: How many query-like texts of the training documents the closed-form maps are fitted on, whatever
            the step budget (fewer when the documents give fewer; at least
            :data:`st_leap.exit_maps.MIN_FIT_TEXTS`).
        dev_documents: Documents held out of training; their texts retrieving them from the whole index are the dev
            signal (never a query set or qrels).
        dev_queries: How many dev texts.
        eval_steps: Evaluate the dev signal every N steps (the learning curve, in ``leap_training.json``).
        document_embeddings: Your index's vectors (an ``.npz`` with ``ids`` and ``embeddings``, an ``.npy`` in corpus
            order, a FAISS index file or a LanceDB table ``DB_FOLDER::TABLE``, read by
            :func:`st_leap.corpus.read_document_embeddings`; or an array), so that the index model's pass over the
            documents is skipped.
        work_dir: Where the initial student, the checkpoints and the trained student go. Default: ``<out>-training``.
        resume: Continue from the newest checkpoint in ``work_dir``.
        seed: Seed of the dev split, the texts and their order.
        train_seed: Seed of the training itself (torch's and the trainer's: the batches' order, dropout), apart from
            ``seed``: two runs that differ only here train on the same texts and are scored on the same dev split.
        distill_weight: Scales the distillation loss (the texts toward the index model's embedding of the same
            text; :func:`student_loss`). 0 drops that dataset and loss: retrieval alone.
        retrieval_weight: Scales the retrieval loss (the texts toward their own document,
            :class:`~st_leap.losses.QueryRetrievalLoss`). 0 drops that dataset and loss: distillation alone.
        hard_negatives: Documents of the index each text is also scored against, mined from the index
            (:func:`st_leap.training.mine_hard_negatives`; default 0: in-batch negatives only).
        negatives_from: Mine them near the index model's embedding of the text (``"query"``) or near its own
            document (``"document"``).
        negatives_skip: Ranks skipped after the own document (likely false negatives; default
            :data:`st_leap.training.NEGATIVES_DEFAULTS`).
        negatives_pool: Ranks the ``hard_negatives`` are drawn from after the skipped ones (default
            :data:`st_leap.training.NEGATIVES_DEFAULTS`).
        soft_weight: Weight of a KL term toward the index model's score distribution over the batch's candidate
            documents (default 0: off).
        soft_scale: Inverse temperature of the index model's scores in that soft target.
        queries: Past queries of your index, when you keep a log of them (no labels): a text file of one query a
            line or a ``queries.jsonl`` (:func:`st_leap.corpus.read_queries`). They train beside the corpus's texts,
            toward the index model's embedding of the same query (the distillation loss). Default: none, the
            documents alone.
        query_fraction: The share of training batches drawn from ``queries`` (default
            :data:`st_leap.training.QUERY_FRACTION`); the queries repeat in seeded shuffles to fill it.

    The levers from ``distill_weight`` on are off by default (today's training exactly) until measured on the dev
    split; they are recorded in the config beside the model (``loss`` and ``retrieval``).

    Returns:
        A :class:`QueryEncoderResult`.

    Raises:
        FileNotFoundError: a missing corpus or document embeddings file, before any model loads.
        ValueError: before any model loads: a malformed corpus or one without text (naming the file and line),
            document embeddings that miss a corpus id, a bad ``init`` or ``depth``, ``dev_documents`` that leave no
            training document, training documents that give fewer texts than the map fit needs, bad ``kinds`` or
            ``layers`` (beyond the model's layers: read from its config), both weights 0, a bad lever, or a queries
            file without a query (or with ``distill_weight`` 0).
    """
    from st_leap.evaluation.dev import corpus_depth_evaluator
    from st_leap.exit_maps import MIN_FIT_TEXTS, fit_exit_maps
    from st_leap.model import load
    from st_leap.teacher import compute_teacher_embeddings, index_embeddings, write_shared_cache
    from st_leap.training import TrainConfig, corpus_training_texts, train

    documents = read_corpus(corpus)  # a bad corpus fails before any model loads
    if queries is not None:
        read_queries(queries)  # so does a bad queries file
        if query_fraction is None:  # recorded as used, whatever the default becomes
            from st_leap.training import QUERY_FRACTION

            query_fraction = QUERY_FRACTION
    elif query_fraction is not None:
        raise ValueError("query_fraction needs queries (a file of past queries)")
    given = document_embeddings
    embeddings_path = None
    if isinstance(given, (str, Path)):
        embeddings_path = str(given)
        given = read_document_embeddings(given, documents)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if layers is not None and init == "leap":
        raise ValueError("layers picks a shallow start; init='leap' keeps every layer: give one or the other")
    if isinstance(map_texts, bool) or not isinstance(map_texts, int) or map_texts < MIN_FIT_TEXTS:
        raise ValueError(f"map_texts must be an int >= {MIN_FIT_TEXTS} (the closed-form map fit), got {map_texts!r}")
    if train_texts is not None and (isinstance(train_texts, bool) or not isinstance(train_texts, int)
                                    or train_texts < batch_size):
        raise ValueError(f"train_texts must be null or an int >= batch_size ({batch_size}), got {train_texts!r}")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds or any(kind not in QUERY_KINDS for kind in kinds):
        raise ValueError(f"kinds must be a non-empty list of {', '.join(QUERY_KINDS)}, got {kinds!r}")
    distill_weight = _weight("distill_weight", distill_weight)
    retrieval_weight = _weight("retrieval_weight", retrieval_weight)
    if distill_weight == 0 and retrieval_weight == 0:
        raise ValueError("distill_weight and retrieval_weight are both 0: nothing would train")
    index_path = resources.resolve_model(index_model)
    if max_steps is None:
        max_steps = default_max_steps(index_path)
    if train_texts is None:
        train_texts = default_train_texts(index_path, max_steps, batch_size)
    student_path = resources.resolve_model(student) if student is not None else index_path
    # The start model's depth from its config, before any weights load (init_student checks again): the layers the
    # run starts from, given or picked, are recorded (``start_layers``), since a pick can change between versions.
    start = _model_config(student_path)
    start_depth = getattr(start, "num_hidden_layers", None) or getattr(start, "n_layers", None)
    if layers is not None:
        layers = check_layers(layers, start_depth, depth)
    start_layers = list(layers) if layers is not None else pick_layers(start_depth, depth, init) if start_depth else None
    other_student = student_path if student is not None else None  # ``student`` is the model from here on
    leap = init == "leap"
    work = Path(work_dir) if work_dir is not None else Path(f"{out}-training")
    if given is not None and embeddings_path is None:
        work.mkdir(parents=True, exist_ok=True)
        embeddings_path = str(work / "document_embeddings.npz")
        np.savez(embeddings_path, ids=np.array(documents.ids), embeddings=np.asarray(given, dtype=np.float32))
    config = TrainConfig(
        model=str(work / "init"), teacher=index_path, output_dir=str(work / "student"), max_steps=max_steps,
        stop_at_step=stop_at_step, batch_size=batch_size, learning_rate=learning_rate, num_sentences=train_texts,
        warmup_steps=max(1, max_steps // 20), group_by_length=True, max_seq_length=max_seq_length, seed=train_seed,
        sentence_seed=seed, logging_steps=max(1, min(50, max_steps // 10)),
        loss=student_loss(leap, distill_weight if distill_weight > 0 else 1.0),  # 0: the loss is not run
        retrieval=retrieval_settings(
            leap, depth, retrieval_weight=retrieval_weight, distill_weight=distill_weight,
            hard_negatives=hard_negatives, negatives_from=negatives_from, negatives_skip=negatives_skip,
            negatives_pool=negatives_pool, soft_weight=soft_weight, soft_scale=soft_scale,
        ),
        corpus={"path": str(corpus), "dev_documents": dev_documents, "kinds": list(kinds),
                "document_embeddings": embeddings_path,
                **({"queries": str(queries)} if queries is not None else {}),
                **({"query_fraction": query_fraction} if query_fraction is not None else {})},
        exit_threshold=None, exit_min_layer=1, save_steps=eval_steps or 250, save_total_limit=2, resume=resume,
        eval_steps=eval_steps, dev_queries=dev_queries, dev_documents=max(dev_documents, dev_queries),
        dev_depths=[depth],
    )
    # Texts only, before any model loads: the training texts (the step budget's worth) and the map-fitting texts
    # (``map_texts`` of the same seeded order, whatever the budget).
    texts = corpus_training_texts(config)[0]
    map_fit_texts = corpus_training_texts(config, max_texts=map_texts)[0]
    if len(map_fit_texts) < MIN_FIT_TEXTS:
        raise ValueError(
            f"{documents.source}: the training documents give {len(map_fit_texts)} query-like texts; the closed-form "
            f"map fit needs at least {MIN_FIT_TEXTS} (hold out fewer dev documents, or give more documents)"
        )
    empty = len(documents.empty)
    if empty:
        logger.info("%d of %d documents have an empty title and text: kept in the index, skipped for training",
                    empty, len(documents))
    index = SentenceTransformer(index_path)
    start = time.perf_counter()
    document_vectors = index_embeddings(index, documents.documents, given)  # once, into the shared cache
    index_seconds = time.perf_counter() - start
    # The index model's embeddings at the training length: the targets of both closed-form map fits, and the labels
    # train() reads from the shared cache. The two lists come in one seeded order, so the shorter is a prefix of the
    # longer: one pass over the longer serves both (a wide index model's pass is the cost of a run).
    longer, shorter = (texts, map_fit_texts) if len(texts) >= len(map_fit_texts) else (map_fit_texts, texts)
    serving_length, index.max_seq_length = index.max_seq_length, max_seq_length
    try:
        if longer[: len(shorter)] == shorter:
            embedded = compute_teacher_embeddings(index, longer, None, shared_cache=True)
            if longer is map_fit_texts:  # the budget's texts are the prefix: store their labels for train()
                write_shared_cache(index, texts, embedded[: len(texts)])
            targets = embedded[: len(map_fit_texts)]
        else:
            targets = compute_teacher_embeddings(index, map_fit_texts, None, shared_cache=True)
    finally:
        index.max_seq_length = serving_length
    name = Path(index_path).name if Path(index_path).exists() else index_path
    maps_fit = {"target_embeddings": targets, "target_name": name, "seed": seed}
    if not (work / "init" / "modules.json").exists():
        student = init_student(student_path, depth, init, layers=layers)
        fit_exit_maps(student, map_fit_texts, **maps_fit)
        save_model(student, work / "init")
    evaluator = corpus_depth_evaluator(
        documents, index, [depth], dev_documents=dev_documents, seed=seed, num_queries=dev_queries,
        document_embeddings=document_vectors, batch_size=batch_size,
    )
    earlier = _read_record(out) if resume else None  # the stopped run's record, before this run replaces it
    start = time.perf_counter()
    trained = train(config, evaluator=evaluator)
    train_seconds = time.perf_counter() - start
    earlier_seconds = _earlier_train_seconds(earlier, trained.resumed_from, out)
    student = trained.model
    dev = _dev_score(evaluator, student, depth)
    maps = "trained"
    refit = load(str(config.output_dir))
    fit_exit_maps(refit, map_fit_texts, **maps_fit)
    refit_dev = _dev_score(evaluator, refit, depth)
    if refit_dev["ndcg@10"] > dev["ndcg@10"]:
        student, dev, maps = refit, refit_dev, "refit"
    logger.info("dev NDCG@10 at depth %d: %.4f (maps %s; index model %.4f)", depth, dev["ndcg@10"], maps,
                dev["reference_ndcg@10"])
    if leap:  # the whole trained stack, served at ``depth`` (encode_query(truncate_layers=None, exit_threshold=...)
        student[0].truncate_layers = depth  # exits per sample instead)
    save_model(student, work / "query_encoder")  # the query side on its own, as served
    model = build_router(student, index)
    save_model(model, out)
    result = QueryEncoderResult(
        path=str(out), student_path=str(work / "query_encoder"), depth=depth, init=init, layers=layers,
        start_layers=start_layers,
        steps=trained.steps,
        student=other_student,
        resumed_from=trained.resumed_from, empty_documents=empty, map_fit_texts=len(map_fit_texts),
        train_seconds=train_seconds + (earlier_seconds or 0.0), earlier_train_seconds=earlier_seconds,
        index_seconds=index_seconds, dev=dev, maps=maps, config=config.to_dict(),
    )
    write_json({**result.to_dict(), "dev_refit": refit_dev, "log_history": trained.log_history},
               Path(out) / "query_encoder.json")
    return result


def _read_record(out: str | Path) -> dict[str, Any] | None:
    """:func:`read_result`, or ``None`` when ``out`` has no readable record."""
    try:
        return read_result(out)
    except (OSError, ValueError):
        return None


def _earlier_train_seconds(record: dict[str, Any] | None, resumed_from: str | None, out: str | Path) -> float | None:
    """The training seconds before a resumed run's checkpoint, from the stopped run's record when it stopped there
    (its ``steps`` are the checkpoint's); ``None`` when the run did not resume or no record says (a warning then)."""
    if resumed_from is None:
        return None
    step = Path(resumed_from).name.rpartition("-")[2]
    if record is not None and str(record.get("steps")) == step and isinstance(record.get("train_seconds"), (int, float)):
        return float(record["train_seconds"])
    logger.warning("%s: no record of the training before %s (its run did not finish a segment there): the recorded "
                   "train_seconds count this run's training only", out, resumed_from)
    return None


def read_result(folder: str | Path) -> dict[str, Any]:
    """The ``query_encoder.json`` that :func:`fit_query_encoder` wrote beside the model."""
    return json.loads((Path(folder) / "query_encoder.json").read_text(encoding="utf-8"))
