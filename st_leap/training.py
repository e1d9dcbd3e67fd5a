"""Config-driven LEAP training (used by ``st-leap train``, ``st-leap demo`` and the training benchmarks).

:class:`TrainConfig` holds the settings of one run, :func:`train` runs it and returns a :class:`TrainResult`.
Training always goes through sentence-transformers' own machinery: ``SentenceTransformerTrainer`` (``api:
"trainer"``, works under ``torchrun``/accelerate) or the classic ``model.fit`` (``api: "fit"``, which builds the
same trainer). Measuring a trained model is :func:`st_leap.evaluation.sweep.measure`.

Checkpoints (``api: "trainer"``) are the Trainer's own: every ``save_steps`` optimizer steps (and every
``save_minutes`` of wall time) a ``checkpoint-N`` folder under ``<output_dir>/checkpoints/`` holds the model,
optimizer, scheduler, RNG and Trainer state, plus the loss's own parameters and the run's config; the last
``save_total_limit`` are kept. ``resume`` continues from one (``trainer.train(resume_from_checkpoint=...)``): same
data order, learning-rate schedule and :class:`~st_leap.losses.LEAPLoss` step counter, so a resumed run ends with
the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

from st_leap import resources
from st_leap.losses.leap import LEAPLoss
from st_leap.losses.query_retrieval import QueryRetrievalLoss
from st_leap.model import as_early_exit, from_pretrained
from st_leap.reporting import save_model, write_json
from st_leap.sampler import LengthGroupedBatchSampler
from st_leap.teacher import compute_teacher_embeddings, index_embeddings, teacher_dataset

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one LEAP training run (the keys of a ``st-leap train --config`` file).

    ``model``/``teacher``: a local folder, a Hub id, or the shortcuts ``"minilm"`` (all-MiniLM-L6-v2) and
    ``"mpnet"`` (all-mpnet-base-v2) from :mod:`st_leap.resources`; ``teacher: null`` = self-distillation.
    ``teacher_mode``: ``"live"`` (frozen teacher run at every step) or ``"precomputed"`` (embeddings computed once
    by :mod:`st_leap.teacher`, cached, and given to the loss as labels). ``cache_dir``: where the precomputed
    teacher cache goes; ``null`` (the default) uses the shared, content-keyed cache
    ``<cache root>/teacher/<key>/`` outside the model folder (cache root ``$ST_LEAP_CACHE``, else
    ``$XDG_CACHE_HOME/st_leap``, else ``~/.cache/st_leap``): a run with the same teacher, texts, max_seq_length and
    teacher layers reuses it, any other run gets its own folder. A named ``cache_dir`` holds one cache and refuses
    (``CacheMismatchError``) a run with another teacher, dataset or layer set. ``loss``: keyword arguments of
    :class:`~st_leap.losses.LEAPLoss`. ``exit_threshold``/``exit_min_layer``: the exit defaults saved with the
    model. ``data``: ``"sentences"`` (:func:`~st_leap.resources.load_sentences`) or ``"passages"``
    (:func:`~st_leap.resources.load_passages`, ``sentences_per_passage`` consecutive sentences of news and
    reviews; train them at the serving length, e.g. ``max_seq_length: 256``) or ``"mixed"`` (both, shuffled
    together, ``passage_fraction`` of them passages: short query-like texts and documents, as a search index
    sees them) or ``"queries"`` (:func:`~st_leap.resources.query_sentences`: single sentences, short query-like
    texts, without any sentence of the held-out dev passages); ``num_sentences`` is the number of training texts of any kind. ``group_by_length``: batches of similar-length texts
    (:class:`~st_leap.sampler.LengthGroupedBatchSampler`, less padding, faster steps; ``api: "trainer"`` only).

    Checkpoints (written under ``<output_dir>/checkpoints/checkpoint-N``, never into the saved model's own files):
    ``save_steps``: every N optimizer steps, and at the last step (``null``: no step-based checkpoints).
    ``save_minutes``: also every N minutes of wall time (``api: "trainer"`` only). ``save_total_limit``: keep the
    last K checkpoints (``null``: keep all). ``resume``: ``true`` continues from the newest complete checkpoint in
    ``<output_dir>/checkpoints`` (from step 0, with a warning, if there is none), a path continues from that
    checkpoint; ``api: "trainer"`` only. A resumed run must use the same config (a warning lists the keys that
    differ from the checkpoint's); with ``stop_at_step`` (or ``max_train_seconds``) a stopped run also checkpoints, so
    it can be resumed. ``stop_at_step``: stop after that many optimizer steps, the learning-rate schedule still
    running over ``max_steps`` (a step budget: the same model on any machine). ``max_train_seconds``: a wall-clock
    cap, for exploration only; reaching it warns, and the recorded ``steps`` say how many ran.

    Dev signals (``api: "trainer"`` only): with ``eval_steps: N`` the Trainer evaluates every N steps and logs, at
    the config's exit settings and the model's serving length, NDCG@10 and the exit rate on a cloze retrieval split
    of held-out passages (:func:`~st_leap.resources.cloze_retrieval_dev`, ``dev_queries`` queries over
    ``dev_documents`` passages, never a BEIR test set), and the cosine of queries and documents to the teacher's (or,
    without a teacher, the starting model's) embeddings (:class:`~st_leap.evaluation.TeacherAgreementEvaluator`).
    ``dev_depths`` (a list of layers) switches the dev signal to queries cut at each of those depths against the
    reference's own document embeddings (a query encoder for an index that stays). The evaluator itself is built by
    :func:`st_leap.evaluation.dev.dev_evaluator` and passed to :func:`train`.

    ``corpus`` (ours, needs a teacher: the model that built your index): train on the documents of your own index
    instead of the shared data. Keys: ``path`` (a BEIR folder, a ``corpus.jsonl[.gz]`` or a text file of one
    document a line, :func:`st_leap.corpus.read_corpus`), ``dev_documents`` (200: held out, never trained on; the
    dev signal is their texts retrieving their own documents, :func:`st_leap.evaluation.dev.corpus_depth_evaluator`),
    ``kinds`` (the query-like texts made of each document, :func:`st_leap.corpus.query_texts`) and
    ``document_embeddings`` (your index's vectors, :func:`st_leap.corpus.read_document_embeddings`; default: the
    teacher embeds the documents once into the shared cache). The training texts are query-like texts of the other
    documents (``num_sentences`` of them at most); with ``retrieval`` each is paired with its own document's
    embedding. Optional: ``queries`` (a file of past queries of the index, no labels, :func:`st_leap.corpus.read_queries`)
    adds a third dataset of those queries toward the teacher's embedding of the same query, through the distillation
    loss, and ``query_fraction`` (:data:`QUERY_FRACTION`) is the share of training batches drawn from it (the queries
    repeat in seeded shuffles to fill it).

    ``retrieval`` (ours, ``api: "trainer"``, needs a teacher: the index's model): adds a second dataset and loss,
    :class:`~st_leap.losses.QueryRetrievalLoss`, on sentence-to-passage pairs
    (:func:`~st_leap.resources.query_passage_pairs`, never the dev passages), the passages embedded once by the
    teacher at its own serving length. Keys: ``passages`` (how many passages; each gives all its sentences as
    queries), ``layers`` (default: every layer), ``scale`` (20), ``use_exit_maps`` (default: if the model has
    maps). The Trainer draws batches from the two datasets in proportion to their sizes. Optional levers, all off by
    default (today's training exactly): ``weight`` (1: multiplies the retrieval loss), ``distill`` (true: false drops
    the distillation dataset and loss, retrieval alone), ``hard_negatives`` (0: how many documents each text gets
    as hard negatives, mined from the index by :func:`mine_hard_negatives` from the documents nearest the index
    model's embedding of the text, ``negatives_from: "query"``, or of its own document, ``"document"``; the own
    document and the first ``negatives_skip`` ranks are skipped, the k drawn from the next ``negatives_pool``),
    ``soft_weight`` (0: the weight of a KL term toward the index model's score distribution over the batch's
    candidates, at inverse temperature ``soft_scale``, 20). See :class:`~st_leap.losses.QueryRetrievalLoss`.
    """

    model: str = "minilm"
    teacher: str | None = "minilm"
    teacher_mode: str = "precomputed"
    output_dir: str = "runs/leap"
    num_sentences: int | None = None
    sentence_seed: int = 12345
    data: str = "sentences"
    sentences_per_passage: int = 8
    passage_fraction: float = 0.25
    max_steps: int = 240
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_steps: int = 24
    scheduler: str = "linear"
    group_by_length: bool = False
    weight_decay: float = 0.01
    max_seq_length: int = 64
    api: str = "trainer"
    seed: int = 42
    logging_steps: int = 20
    loss: dict[str, Any] = field(default_factory=dict)
    loss_version: int = 2
    exit_threshold: float | None = 0.95
    exit_min_layer: int = 3
    cache_dir: str | None = None
    max_train_seconds: float | None = None
    stop_at_step: int | None = None
    save: bool = True
    save_steps: int | None = 500
    save_minutes: float | None = None
    save_total_limit: int | None = 2
    resume: bool | str = False
    eval_steps: int | None = None
    dev_queries: int = 200
    dev_documents: int = 1000
    dev_depths: list[int] | None = None
    retrieval: dict[str, Any] | None = None
    corpus: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.loss_version not in (1, 2):
            raise ValueError(f"loss_version must be 1 (names before issue 12) or 2, got {self.loss_version!r}")
        if self.loss_version == 1:
            self.loss = migrate_loss_settings(self.loss, self.max_steps)
            self.loss_version = 2
        if self.teacher_mode not in ("live", "precomputed"):
            raise ValueError(f"teacher_mode must be 'live' or 'precomputed', got {self.teacher_mode!r}")
        if self.data not in ("sentences", "passages", "mixed", "queries"):
            raise ValueError(f"data must be 'sentences', 'passages', 'mixed' or 'queries', got {self.data!r}")
        if self.dev_depths is not None:
            depths = self.dev_depths
            if (
                not isinstance(depths, (list, tuple)) or not depths
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths)
            ):
                raise ValueError(f"dev_depths must be null or a non-empty list of layers >= 1, got {depths!r}")
            self.dev_depths = sorted(set(depths))
        fraction = self.passage_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"passage_fraction must be a number in [0, 1], got {fraction!r}")
        if self.api not in ("trainer", "fit"):
            raise ValueError(f"api must be 'trainer' or 'fit', got {self.api!r}")
        if self.group_by_length and self.api != "trainer":
            raise ValueError("group_by_length needs api='trainer' (fit builds its own random batches)")
        for name in ("max_steps", "batch_size", "max_seq_length", "logging_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        for name in ("dev_queries", "dev_documents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.dev_queries > self.dev_documents:
            raise ValueError(f"dev_queries ({self.dev_queries}) must not exceed dev_documents ({self.dev_documents})")
        if self.eval_steps is not None and self.api != "trainer":
            raise ValueError("eval_steps needs api='trainer' (the Trainer runs the dev evaluation)")
        stop = self.stop_at_step
        if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= self.max_steps):
            raise ValueError(f"stop_at_step must be null or an int in 1..max_steps ({self.max_steps}), got {stop!r}")
        if stop is not None and self.api != "trainer":
            raise ValueError("stop_at_step needs api='trainer' (a Trainer callback stops the run)")
        for name in ("save_steps", "save_total_limit", "eval_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be null or an int >= 1, got {value!r}")
        minutes = self.save_minutes
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
            raise ValueError(f"save_minutes must be null or a number > 0, got {self.save_minutes!r}")
        if not (isinstance(self.resume, bool) or (isinstance(self.resume, str) and self.resume)):
            raise ValueError(f"resume must be true, false or a checkpoint path, got {self.resume!r}")
        if self.api == "fit" and self.resume is not False:
            raise ValueError(
                "resume needs api='trainer': the fit path cannot restore the LEAPLoss step counter or the loss's own "
                "parameters from a checkpoint, so a resumed fit run would not continue the interrupted one"
            )
        if self.retrieval is not None:
            allowed = {"passages", "distill"} | RETRIEVAL_LOSS_KEYS | set(NEGATIVES_DEFAULTS)
            needs_passages = self.corpus is None  # with a corpus the pairs are its own texts and documents
            if (
                not isinstance(self.retrieval, dict) or (needs_passages and "passages" not in self.retrieval)
                or set(self.retrieval) - allowed
            ):
                raise ValueError(
                    f"retrieval must be null or a dict with 'passages' (unless corpus is given) and optionally "
                    f"{sorted(allowed - {'passages'})}, got {self.retrieval!r}"
                )
            if self.teacher is None:
                raise ValueError("retrieval needs a teacher: the model whose passage embeddings the index holds")
            if self.api != "trainer":
                raise ValueError("retrieval needs api='trainer' (two datasets and losses in one Trainer)")
            check_retrieval_options(self.retrieval)
        if self.corpus is not None:
            allowed = {"path", "dev_documents", "kinds", "document_embeddings", "queries", "query_fraction"}
            if not isinstance(self.corpus, dict) or "path" not in self.corpus or set(self.corpus) - allowed:
                raise ValueError(
                    f"corpus must be null or a dict with 'path' and optionally {sorted(allowed - {'path'})}, "
                    f"got {self.corpus!r}"
                )
            if self.teacher is None:
                raise ValueError("corpus needs a teacher: the model that built the index of that corpus")
            fraction = self.corpus.get("query_fraction", QUERY_FRACTION)
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
                raise ValueError(f"corpus query_fraction must be a number in (0, 1), got {fraction!r}")
            if self.corpus.get("queries") is not None and self.api != "trainer":
                raise ValueError("corpus queries need api='trainer' (a third dataset of one Trainer)")
            if "query_fraction" in self.corpus and self.corpus.get("queries") is None:
                raise ValueError("corpus query_fraction needs corpus queries (a file of past queries)")
            if self.corpus.get("queries") is not None and self.retrieval is not None and not self.retrieval.get(
                    "distill", True):
                raise ValueError("corpus queries train through the distillation loss: it cannot be dropped "
                                 "(retrieval distill false)")
        if self.api == "fit" and self.save_minutes is not None:
            raise ValueError("save_minutes needs api='trainer' (fit takes no Trainer callbacks); use save_steps")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a JSON or YAML file (unknown keys are an error)."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as error:
                raise ImportError(f"{path} is YAML: pip install 'st-leap[yaml]' (or write the config as JSON)") from error

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown training config keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (an early-exit model with the config's exit defaults) and
    how the run went."""

    model: SentenceTransformer
    steps: int | None
    train_seconds: float
    teacher_seconds: float
    log_history: list[dict[str, Any]] | None
    loss_config: dict[str, Any]
    loss_step: int | None = None
    resumed_from: str | None = None
    teacher_cache: str | None = None
    teacher_cache_reused: bool | None = None

    def to_dict(self, config: TrainConfig) -> dict[str, Any]:
        """The ``leap_training.json`` record: config, loss settings, timing, steps and the Trainer's log.
        ``train_seconds`` of a resumed run counts this process only; ``resumed_from`` names its checkpoint.
        ``teacher_cache`` is the precomputed teacher cache folder (None: live or no teacher) and
        ``teacher_cache_reused`` whether it was loaded rather than computed (then ``teacher_seconds`` is the load
        time)."""
        return {
            "config": config.to_dict(),
            "loss": self.loss_config,
            "train_seconds": self.train_seconds,
            "teacher_seconds": self.teacher_seconds,
            "steps": self.steps,
            "loss_step": self.loss_step,
            "resumed_from": self.resumed_from,
            "teacher_cache": self.teacher_cache,
            "teacher_cache_reused": self.teacher_cache_reused,
            "log_history": self.log_history,
        }


#: Keys of a config's ``retrieval`` that are :class:`~st_leap.losses.QueryRetrievalLoss` arguments.
RETRIEVAL_LOSS_KEYS = {"layers", "scale", "use_exit_maps", "hard_negatives", "soft_weight", "soft_scale", "weight"}
#: The hard-negative mining options of a config's ``retrieval`` and their defaults (:func:`mine_hard_negatives`).
NEGATIVES_DEFAULTS: dict[str, Any] = {"negatives_from": "query", "negatives_skip": 5, "negatives_pool": 50}
#: The share of training batches drawn from a corpus config's past queries (``corpus: {"queries": ...}``). Chosen
#: on held-out real queries outside the test splits (benchmarks/results/query/query_dev_*.md): 0.5 came closer to
#: the index model's ranking than 0.25 on SciFact and NFCorpus.
QUERY_FRACTION = 0.5
NEGATIVES_FROM = ("query", "document")


def check_retrieval_options(retrieval: dict[str, Any]) -> None:
    """Check the training levers of a config's ``retrieval`` (its other keys are checked by the loss)."""

    def number(name: str, value: Any, positive: bool) -> None:
        if (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or (not value > 0 if positive else value < 0)
        ):
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"retrieval {name} must be a finite number {bound}, got {value!r}")

    def integer(name: str, value: Any, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"retrieval {name} must be an int >= {low}, got {value!r}")

    integer("hard_negatives", retrieval.get("hard_negatives", 0), 0)
    integer("negatives_skip", retrieval.get("negatives_skip", NEGATIVES_DEFAULTS["negatives_skip"]), 0)
    pool = retrieval.get("negatives_pool", NEGATIVES_DEFAULTS["negatives_pool"])
    integer("negatives_pool", pool, max(1, retrieval.get("hard_negatives", 0)))
    source = retrieval.get("negatives_from", NEGATIVES_DEFAULTS["negatives_from"])
    if source not in NEGATIVES_FROM:
        raise ValueError(f"retrieval negatives_from must be one of {NEGATIVES_FROM}, got {source!r}")
    number("soft_weight", retrieval.get("soft_weight", 0.0), positive=False)
    number("soft_scale", retrieval.get("soft_scale", 20.0), positive=True)
    number("weight", retrieval.get("weight", 1.0), positive=True)
    if not isinstance(retrieval.get("distill", True), bool):
        raise ValueError(f"retrieval distill must be true or false, got {retrieval['distill']!r}")


def mine_hard_negatives(
    documents: np.ndarray,
    owners: Sequence[int] | np.ndarray,
    k: int,
    *,
    queries: np.ndarray | None = None,
    skip: int = NEGATIVES_DEFAULTS["negatives_skip"],
    pool: int = NEGATIVES_DEFAULTS["negatives_pool"],
    seed: int = 12345,
    candidates: Sequence[int] | np.ndarray | None = None,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Hard-negative documents for each text, mined from the index itself.

    Each text is ranked against every document by cosine, from its own document's vector (``queries=None``) or
    from ``queries`` (the index model's embedding of each text). Its own document is never a negative; the first
    ``skip`` ranks after it are skipped (likely false negatives: documents about the same thing), and ``k``
    documents are drawn without replacement from the next ``pool`` ranks (cut to the documents there are), with
    ``seed``. The scores are chunked matmuls over the normalized vectors.

    Args:
        documents: ``(N, D)`` the index's document vectors.
        owners: ``(M,)`` each text's own document (a row of ``documents``).
        k: Negatives per text.
        queries: ``(M, D)`` vectors to rank from instead of the own documents' (``negatives_from="query"``).
        skip: Ranks skipped after the own document.
        pool: Ranks the ``k`` are drawn from.
        seed: Seed of the draw.
        candidates: The rows of ``documents`` that may be negatives (default: all; a corpus run passes its
            training documents, so that the held-out dev documents stay out of training).
        chunk_size: Texts scored at a time (default: about 32M scores a chunk).

    Returns:
        ``(M, k)`` int64 document indices.

    Raises:
        ValueError: ``k < 1``, ``pool < k``, or fewer than ``k`` documents left after the own document and ``skip``.
    """
    documents = np.asarray(documents, dtype=np.float32)
    owners = np.asarray(owners, dtype=np.int64)
    candidates = np.arange(len(documents)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    position = np.full(len(documents), -1, dtype=np.int64)  # each document's column among the candidates
    position[candidates] = np.arange(len(candidates))
    n = len(candidates)
    if k < 1 or pool < k or skip < 0:
        raise ValueError(f"need k >= 1, pool >= k and skip >= 0, got k={k}, pool={pool}, skip={skip}")
    window = min(pool, n - 1 - skip)
    if window < k:
        raise ValueError(
            f"{n} documents leave {max(0, n - 1 - skip)} after the own document and the {skip} skipped ranks: too "
            f"few for {k} hard negatives"
        )

    def normalized(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    vectors = normalized(documents)
    index = vectors[candidates]
    if queries is None:  # one ranking per own document, shared by its texts
        sources, row_source = np.unique(owners, return_inverse=True)
        source_vectors, source_owners = vectors[sources], sources
    else:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.shape != (len(owners), documents.shape[1]):
            raise ValueError(f"queries have shape {queries.shape}, need ({len(owners)}, {documents.shape[1]})")
        source_vectors, source_owners, row_source = normalized(queries), owners, np.arange(len(owners))
    m = skip + window  # the ranks looked at, the own document excluded
    chunk = chunk_size or max(1, min(4096, 2**25 // max(1, n)))
    windows = np.empty((len(source_vectors), window), dtype=np.int64)
    for start in range(0, len(source_vectors), chunk):
        scores = source_vectors[start : start + chunk] @ index.T
        own = position[source_owners[start : start + chunk]]
        scores[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf
        top = np.argpartition(-scores, m - 1, axis=1)[:, :m] if m < n else np.argsort(-scores, axis=1)[:, :m]
        ranked = np.take_along_axis(top, np.lexsort((top, -np.take_along_axis(scores, top, axis=1)), axis=1), axis=1)
        windows[start : start + chunk] = ranked[:, skip:m]
    draw = np.random.default_rng(seed).random((len(owners), window)).argsort(axis=1)[:, :k]
    return candidates[np.take_along_axis(windows[row_source], draw, axis=1)]


def load_student(name: str) -> SentenceTransformer:
    """The student as an early-exit model (``st_leap.from_pretrained``), so it saves with its exit defaults."""
    return from_pretrained(resources.resolve_model(name))


def corpus_training_texts(config: TrainConfig, max_texts: int | None = None) -> tuple[list[str], list[int], Any]:
    """Query-like texts of the training documents of a config with ``corpus`` (the ``dev_documents`` held out by
    :func:`st_leap.corpus.split_documents` give none, nor do empty documents), each with its document's index.

    Args:
        config: A config with ``corpus``.
        max_texts: How many texts at most. Default: the training texts, ``num_sentences`` or ``max_steps *
            batch_size``. The texts come in one seeded order, so a smaller cap gives a prefix of a larger one (the
            closed-form map fit of :func:`st_leap.query_encoder.fit_query_encoder` takes its own number of them,
            whatever the step budget).

    Returns:
        ``(texts, owners, corpus)``: the texts, each one's document index, and the
        :class:`~st_leap.corpus.Corpus`.
    """
    from st_leap.corpus import QUERY_KINDS, query_texts, read_corpus, split_documents

    corpus = read_corpus(config.corpus["path"])
    train_documents, _ = split_documents(corpus, int(config.corpus.get("dev_documents", 200)), seed=config.sentence_seed)
    n = max_texts if max_texts is not None else config.num_sentences or config.max_steps * config.batch_size
    texts, owners = query_texts(
        corpus, train_documents, kinds=config.corpus.get("kinds", QUERY_KINDS), max_texts=n, seed=config.sentence_seed
    )
    return texts, owners, corpus


def query_log_texts(config: TrainConfig, other_rows: int) -> list[str]:
    """The past queries of a corpus config (``corpus: {"queries": FILE}``), repeated in seeded shuffles to fill
    ``query_fraction`` of the training batches beside ``other_rows`` rows of the other datasets (the Trainer draws
    batches in proportion to the datasets' sizes). Empty without ``queries``."""
    from st_leap.corpus import read_queries

    if config.corpus is None or config.corpus.get("queries") is None:
        return []
    queries = read_queries(config.corpus["queries"])
    fraction = float(config.corpus.get("query_fraction", QUERY_FRACTION))
    rows = max(config.batch_size, round(fraction / (1.0 - fraction) * other_rows))
    rng = random.Random(config.sentence_seed)
    texts: list[str] = []
    while len(texts) < rows:
        cycle = list(queries)
        rng.shuffle(cycle)
        texts += cycle
    return texts[:rows]


def training_texts(config: TrainConfig) -> list[str]:
    """The config's training texts: shuffled sentences or passages of the shared data, or query-like texts of the
    config's ``corpus``."""
    if config.corpus is not None:
        return corpus_training_texts(config)[0]
    n = config.num_sentences or config.max_steps * config.batch_size
    if config.data == "passages":
        return resources.load_passages(n, seed=config.sentence_seed, sentences_per_passage=config.sentences_per_passage)
    if config.data == "queries":
        return resources.query_sentences(
            n, seed=config.sentence_seed, held_out_documents=config.dev_documents,
            sentences_per_passage=max(2, config.sentences_per_passage),
        )
    if config.data == "mixed":
        n_passages = round(n * config.passage_fraction)
        texts = resources.load_sentences(n - n_passages, seed=config.sentence_seed) + resources.load_passages(
            n_passages, seed=config.sentence_seed, sentences_per_passage=config.sentences_per_passage
        )
        random.Random(config.sentence_seed).shuffle(texts)
        return texts
    return resources.load_sentences(n, seed=config.sentence_seed)


# Loss keys of configs written before the paper's terms got the paper's names (st_leap 0.x, issue 12).
LEGACY_LOSS_KEYS = {"min_layer": "exit_min_layer", "late_weight": "anchor_weight", "late_layers": "anchor_layers",
                    "redundancy_weight": "adjacent_weight", "redundancy_layers": "adjacent_layers"}


def migrate_loss_settings(loss: dict[str, Any], max_steps: int) -> dict[str, Any]:
    """Loss settings of a config file written before ``loss_version: 2`` in today's names.

    Old ``late_*`` / ``redundancy_*`` were st_leap's own terms; they are now ``anchor_*`` / ``adjacent_*``, and
    ``late`` / ``redundancy`` mean the paper's eqs. 8 / 9. ``student_weight_warmup_steps: N`` becomes
    ``student_weight_ramp: [0, N / max_steps]`` (the same linear ramp).
    """
    if loss.get("preset", "default") != "default":
        raise ValueError(
            "loss_version 1 preset='paper' was not the paper's loss (weights 1.0, no late/redundancy terms) and is "
            "gone: use loss_version 2 with preset 'paper' (Table 14) or list the old weights explicitly"
        )
    out = {LEGACY_LOSS_KEYS.get(k, k): v for k, v in loss.items() if k != "preset"}
    # The version-1 defaults that differ from today's (final 1.0 and the adjacent pull 1.0).
    out.setdefault("final_weight", 1.0)
    out.setdefault("adjacent_weight", 1.0)
    steps = out.pop("student_weight_warmup_steps", 0)
    if steps:
        out["student_weight_ramp"] = [0.0, min(1.0, steps / max_steps)]
    return out


def build_loss(model: SentenceTransformer, config: TrainConfig, teacher: SentenceTransformer | None) -> LEAPLoss:
    loss_kwargs = dict(config.loss)
    loss_kwargs.setdefault("exit_min_layer", config.exit_min_layer)
    loss_kwargs.setdefault("total_steps", config.max_steps)
    if config.teacher_mode == "precomputed" and teacher is not None:
        loss_kwargs.setdefault("num_teacher_layers", int(teacher[0].auto_model.config.num_hidden_layers))
        loss_kwargs.setdefault("teacher_dim", int(teacher.get_embedding_dimension()))
        return LEAPLoss(model, teacher=None, **loss_kwargs)
    return LEAPLoss(model, teacher=teacher, **loss_kwargs)


def train(
    config: TrainConfig | dict[str, Any],
    sentences: Sequence[str] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    evaluator: SentenceEvaluator | None = None,
) -> TrainResult:
    """Run one LEAP training from a config; the model is saved to ``output_dir`` (with ``leap_training.json``)
    if ``config.save``. ``callbacks``: extra ``TrainerCallback``s for the Trainer (``api: "trainer"`` only).
    ``evaluator``: the dev evaluator the Trainer runs every ``config.eval_steps`` (required with ``eval_steps``;
    :func:`st_leap.evaluation.dev.dev_evaluator` builds the config's own, and ``st-leap train`` passes it). An
    evaluator with ``max_seq_length = None`` gets the student's serving length."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if callbacks and config.api != "trainer":
        raise ValueError("callbacks need api='trainer'")
    if config.eval_steps is not None and evaluator is None:
        raise ValueError(
            "eval_steps needs an evaluator: pass evaluator=st_leap.evaluation.dev.dev_evaluator(config) (what "
            "st-leap train does) or your own SentenceEvaluator"
        )
    resume_from = resume_checkpoint(config)  # before any model loads: a bad path fails fast
    if config.corpus is not None:  # a malformed corpus fails here too, naming the file and line
        from st_leap.corpus import read_corpus, read_document_embeddings, read_queries

        corpus = read_corpus(config.corpus["path"])
        if config.corpus.get("document_embeddings") is not None:
            read_document_embeddings(config.corpus["document_embeddings"], corpus)
        if config.corpus.get("queries") is not None:
            read_queries(config.corpus["queries"])
    torch.manual_seed(config.seed)
    model = load_student(config.model)
    original_max_len = model.max_seq_length
    model.max_seq_length = config.max_seq_length
    teacher = None
    if config.teacher is not None:
        teacher = SentenceTransformer(resources.resolve_model(config.teacher), device=str(model.device))
        teacher_length = teacher.max_seq_length
        teacher.max_seq_length = config.max_seq_length
    sentences = list(sentences) if sentences is not None else training_texts(config)
    loss = build_loss(model, config, teacher)
    if evaluator is not None and getattr(evaluator, "max_seq_length", 0) is None:
        evaluator.max_seq_length = original_max_len  # evaluate at the length the model serves at

    teacher_seconds = 0.0
    embeddings = None
    cache_info = None
    distill = config.retrieval is None or config.retrieval.get("distill", True)  # False: retrieval alone
    if not distill:
        dataset = None
    elif config.teacher_mode == "precomputed" and teacher is not None:
        # A named cache_dir, else the shared content-keyed cache: never a folder inside the saved model.
        cache = config.cache_dir or None
        layers = loss.teacher_layers() if loss.settings.intermediate_weight > 0 else None
        start = time.perf_counter()
        embeddings, cache_info = compute_teacher_embeddings(
            teacher, sentences, cache, layers=layers, shared_cache=cache is None, return_info=True
        )
        teacher_seconds = time.perf_counter() - start
        dataset = teacher_dataset(sentences, embeddings)
    else:
        dataset = Dataset.from_dict({"sentence": sentences})
    retrieval_loss = None
    if config.retrieval is not None:
        start = time.perf_counter()
        retrieval_data = retrieval_dataset(config, teacher, teacher_length)
        teacher_seconds += time.perf_counter() - start
        options = {k: v for k, v in config.retrieval.items() if k in RETRIEVAL_LOSS_KEYS}
        retrieval_loss = QueryRetrievalLoss(model, **options)
        datasets = {"distill": dataset, "retrieval": retrieval_data} if distill else {"retrieval": retrieval_data}
        dataset = DatasetDict(datasets)
    if config.corpus is not None and config.corpus.get("queries") is not None:
        # Past queries: a third dataset through the distillation loss, query_fraction of the rows drawn.
        parts = dict(dataset) if isinstance(dataset, DatasetDict) else {"distill": dataset}
        log = query_log_texts(config, sum(len(part) for part in parts.values()))
        unique = list(dict.fromkeys(log))
        if config.teacher_mode == "precomputed" and teacher is not None:
            start = time.perf_counter()
            vectors = compute_teacher_embeddings(teacher, unique, None, shared_cache=True)
            teacher_seconds += time.perf_counter() - start
            row = {text: i for i, text in enumerate(unique)}
            queries_data = teacher_dataset(log, vectors[[row[text] for text in log]])
        else:
            queries_data = Dataset.from_dict({"sentence": log})
        dataset = DatasetDict({**parts, "queries": queries_data})
    if config.teacher_mode == "precomputed":
        teacher = None  # not needed any more: free it

    start = time.perf_counter()
    if config.api == "fit":
        steps, log_history = _train_with_fit(model, loss, sentences, embeddings, config), None
    else:
        steps, log_history = _train_with_trainer(
            model, loss, dataset, config, resume_from, callbacks, evaluator, retrieval_loss
        )
    train_seconds = time.perf_counter() - start
    model.eval()
    model.max_seq_length = original_max_len
    as_early_exit(model, exit_threshold=config.exit_threshold, exit_min_layer=config.exit_min_layer)
    result = TrainResult(
        model, steps, train_seconds, teacher_seconds, log_history, loss.get_config_dict(), loss.step, resume_from,
        teacher_cache=str(cache_info.path) if cache_info is not None else None,
        teacher_cache_reused=cache_info.reused if cache_info is not None else None,
    )
    if config.save:
        save_model(model, config.output_dir)  # aside, then moved in; checkpoints/ beside it are kept
        write_json(result.to_dict(config), Path(config.output_dir) / "leap_training.json")
    return result


def retrieval_dataset(config: TrainConfig, teacher: SentenceTransformer, document_length: int) -> Dataset:
    """The ``retrieval`` dataset of a config: each query sentence with the teacher's embedding of its passage,
    computed once at ``document_length`` (the teacher's own serving length) in the shared teacher cache, shuffled
    with the config's ``sentence_seed``.

    With ``hard_negatives: k`` or ``soft_weight > 0`` each label is ``(R, D)`` instead of ``(D,)``
    (:class:`~st_leap.losses.QueryRetrievalLoss`): the own document, ``k`` hard negatives mined from the same
    document vectors (:func:`mine_hard_negatives`, seeded with ``sentence_seed``; of a ``corpus``, its training
    documents only: the held-out dev documents are never trained on) and, with ``soft_weight``, the
    teacher's embedding of the text itself. The texts' embeddings (for ``negatives_from: "query"`` and the soft
    targets) are the ones the distillation dataset reads, at the config's ``max_seq_length`` from the shared
    cache: a cache hit when the texts are the training texts (a ``corpus`` config)."""
    given = None
    candidates = None  # the documents hard negatives may come from (a corpus: its training documents)
    if config.corpus is not None:  # each text with its own document of the user's index
        from st_leap.corpus import read_document_embeddings, split_documents

        queries, owners, corpus = corpus_training_texts(config)
        passages = corpus.documents
        candidates = split_documents(
            corpus, int(config.corpus.get("dev_documents", 200)), seed=config.sentence_seed
        )[0]
        if config.corpus.get("document_embeddings") is not None:
            given = read_document_embeddings(config.corpus["document_embeddings"], corpus)
    else:
        queries, passages, owners = resources.query_passage_pairs(
            int(config.retrieval["passages"]), seed=config.sentence_seed, held_out_documents=config.dev_documents,
            sentences_per_passage=max(2, config.sentences_per_passage),
        )
    serving_length = teacher.max_seq_length
    teacher.max_seq_length = document_length
    try:
        passage_embeddings = index_embeddings(teacher, passages, given)
    finally:
        teacher.max_seq_length = serving_length
    order = list(range(len(queries)))
    random.Random(config.sentence_seed).shuffle(order)
    texts, own = [queries[i] for i in order], np.asarray([owners[i] for i in order], dtype=np.int64)
    k = int(config.retrieval.get("hard_negatives", 0))
    soft = float(config.retrieval.get("soft_weight", 0.0)) > 0
    if k == 0 and not soft:
        return teacher_dataset(texts, passage_embeddings[own])
    options = {**NEGATIVES_DEFAULTS, **config.retrieval}
    text_vectors = None
    if soft or (k and options["negatives_from"] == "query"):
        serving_length = teacher.max_seq_length
        teacher.max_seq_length = config.max_seq_length  # the distillation labels' length: the same cache entry
        try:
            text_vectors = compute_teacher_embeddings(teacher, list(queries), None, shared_cache=True)[order]
        finally:
            teacher.max_seq_length = serving_length
    rows = [passage_embeddings[own][:, None]]
    if k:
        negatives = mine_hard_negatives(
            passage_embeddings, own, k, queries=text_vectors if options["negatives_from"] == "query" else None,
            skip=int(options["negatives_skip"]), pool=int(options["negatives_pool"]), seed=config.sentence_seed,
            candidates=candidates,
        )
        rows.append(passage_embeddings[negatives])
    if soft:
        rows.append(text_vectors[:, None])
    labels = np.concatenate(rows, axis=1).astype(np.float32, copy=False)
    return Dataset.from_dict({"sentence": texts, "label": labels})


def training_arguments(config: TrainConfig, output_dir: str | Path, **overrides: Any) -> SentenceTransformerTrainingArguments:
    """The Trainer arguments of a run: optimiser, schedule, sampler, seed and checkpointing from ``config``
    (``overrides`` replace any of them). One place, so that a baseline trained for comparison (for example
    sentence-transformers' ``AdaptiveLayerLoss`` in ``benchmarks/pareto``) gets exactly LEAP's settings."""
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.scheduler,
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        # Step checkpoints through the Trainer (save_steps); save_minutes alone saves through SaveEveryMinutes.
        save_strategy="steps" if config.save_steps is not None else "no",
        save_steps=config.save_steps if config.save_steps is not None else 500,
        save_total_limit=config.save_total_limit,
        report_to="none",
        seed=config.seed,
        dataloader_drop_last=True,
        batch_sampler=LengthGroupedBatchSampler if config.group_by_length else BatchSamplers.BATCH_SAMPLER,
    )
    if config.eval_steps is not None:
        settings.update(eval_strategy="steps", eval_steps=config.eval_steps)
    settings.update(overrides)
    return SentenceTransformerTrainingArguments(**settings)


def _train_with_trainer(
    model: SentenceTransformer,
    loss: LEAPLoss,
    dataset: Dataset,
    config: TrainConfig,
    resume_from: str | None = None,
    extra_callbacks: Sequence[TrainerCallback] = (),
    evaluator: SentenceEvaluator | None = None,
    retrieval_loss: torch.nn.Module | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    checkpointing = config.save_steps is not None or config.save_minutes is not None
    args = training_arguments(config, checkpoint_dir(config))
    callbacks: list[TrainerCallback] = [LossStepSync(loss)]
    if config.save_minutes is not None:
        callbacks.append(SaveEveryMinutes(config.save_minutes))
    if config.stop_at_step is not None:
        callbacks.append(StopAtStep(config.stop_at_step, checkpoint=checkpointing))
    if config.max_train_seconds:
        callbacks.append(TimeBudget(config.max_train_seconds, checkpoint=checkpointing))
    callbacks.extend(extra_callbacks)
    # One loss per dataset: "distill" (LEAPLoss) and "retrieval", or one of them (a term weighted 0 is dropped).
    losses = loss if retrieval_loss is None else {
        name: {"distill": loss, "retrieval": retrieval_loss, "queries": loss}[name] for name in dataset
    }
    trainer = LEAPTrainer(
        model=model, args=args, train_dataset=dataset, loss=losses, callbacks=callbacks, evaluator=evaluator
    )
    trainer.leap_loss, trainer.leap_config = loss, config.to_dict()
    if resume_from is not None:
        warn_config_changes(config, resume_from)
        state = json.loads((Path(resume_from) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        if state["global_step"] >= config.max_steps:
            # A finished run (killed while saving the final model, say): nothing left to train. Trainer.train
            # would run one more step from a mid-epoch checkpoint at max_steps, so load its weights instead.
            logger.info("%s is at step %d of %d: nothing left to train", resume_from, state["global_step"],
                        config.max_steps)
            trainer._load_from_checkpoint(resume_from)
            loss.step = state["global_step"] * args.gradient_accumulation_steps
            return state["global_step"], state.get("log_history", [])
        logger.info("Resuming from %s", resume_from)
    elif config.resume is False and (stale := latest_checkpoint(checkpoint_dir(config))) is not None:
        message = (
            f"{checkpoint_dir(config)} holds checkpoints of an earlier run (newest: {Path(stale).name}). This run "
            "starts from step 0, and its checkpoint rotation will delete them: to continue that run instead, stop "
            "and pass resume (st-leap train --resume)"
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=3)
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer.state.global_step, trainer.state.log_history


def _train_with_fit(
    model: SentenceTransformer, loss: LEAPLoss, sentences: list[str], labels: Any, config: TrainConfig
) -> int:
    from sentence_transformers.sentence_transformer.readers import InputExample
    from torch.utils.data import DataLoader

    examples = [
        InputExample(texts=[s]) if labels is None else InputExample(texts=[s], label=labels[i])
        for i, s in enumerate(sentences)
    ]
    loader = DataLoader(examples, shuffle=True, batch_size=config.batch_size, drop_last=True)
    steps_per_epoch = min(config.max_steps, len(loader))
    epochs = max(1, -(-config.max_steps // max(1, len(loader))))
    # Checkpoints only (fit's own Trainer checkpoints); resuming them is refused by TrainConfig (api='trainer').
    checkpoints = {}
    if config.save_steps is not None:
        checkpoints = dict(
            checkpoint_path=str(checkpoint_dir(config)),
            checkpoint_save_steps=config.save_steps,
            checkpoint_save_total_limit=config.save_total_limit or 0,
        )
    model.fit(
        train_objectives=[(loader, loss)],
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=config.warmup_steps,
        scheduler="warmup" + config.scheduler if config.scheduler != "constant" else "constantlr",
        optimizer_params={"lr": config.learning_rate},
        weight_decay=config.weight_decay,
        show_progress_bar=True,
        **checkpoints,
    )
    return steps_per_epoch * epochs


class StopAtStep(TrainerCallback):
    """Stops training after optimizer step ``step`` while the learning-rate schedule runs over ``max_steps``: a
    step budget, so the same config trains the same model on any machine. With ``checkpoint`` it also saves a
    checkpoint there."""

    def __init__(self, step: int, checkpoint: bool = False) -> None:
        self.step = step
        self.checkpoint = checkpoint

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            logger.info("stop_at_step %d reached: stopping", self.step)
            control.should_training_stop = True
            control.should_save = control.should_save or self.checkpoint
        return control


class TimeBudget(TrainerCallback):
    """Stops training after ``seconds`` of wall-clock time (checked after each step); with ``checkpoint`` it also
    saves a checkpoint there, so the run can be resumed. A wall-clock cap makes the trained model depend on the
    machine, so reaching it warns (the recorded result says how many steps ran); committed recipes use
    ``max_steps`` / ``stop_at_step`` instead."""

    def __init__(self, seconds: float, checkpoint: bool = False) -> None:
        self.seconds = seconds
        self.checkpoint = checkpoint
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start > self.seconds:
            message = (
                f"max_train_seconds={self.seconds:.0f} reached at step {state.global_step} of {state.max_steps}: "
                "stopping. Another machine would stop at another step and train another model; for a reproducible "
                f"run set stop_at_step: {state.global_step} instead"
            )
            logger.warning(message)
            warnings.warn(message, stacklevel=2)
            control.should_training_stop = True
            control.should_save = control.should_save or self.checkpoint
        return control


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and resume

CHECKPOINTS = "checkpoints"
LOSS_STATE_NAME = "leap_loss.pt"
CONFIG_NAME = "leap_config.json"
# Keys a resumed run may change without changing what it computes.
RESUME_FREE_KEYS = {"output_dir", "resume", "save", "save_steps", "save_minutes", "save_total_limit",
                    "max_train_seconds", "stop_at_step", "logging_steps", "cache_dir", "eval_steps", "dev_queries",
                    "dev_documents", "dev_depths"}


def checkpoint_dir(config: TrainConfig) -> Path:
    """Where the run's ``checkpoint-N`` folders go: ``<output_dir>/checkpoints``."""
    return Path(config.output_dir) / CHECKPOINTS


def is_complete_checkpoint(path: str | Path) -> bool:
    """A checkpoint folder whose ``trainer_state.json`` (the last file the Trainer writes) is there and parses."""
    try:
        json.loads((Path(path) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(folder: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (transformers' ``get_last_checkpoint``; if that one is
    incomplete, a run killed while saving, the newest complete one before it), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    last = get_last_checkpoint(str(folder))
    if last is None or is_complete_checkpoint(last):
        return last
    for path in reversed(sort_checkpoints(str(folder))):
        if is_complete_checkpoint(path):
            logger.warning("%s is incomplete (killed while saving?): resuming from %s", last, path)
            return path
    return None


def resume_checkpoint(config: TrainConfig) -> str | None:
    """The checkpoint ``config.resume`` names: None (no resume, or ``True`` and no checkpoint yet), the newest
    complete one in ``<output_dir>/checkpoints`` (``True``), or the given path (checked)."""
    if config.resume is False:
        return None
    if config.resume is True:
        found = latest_checkpoint(checkpoint_dir(config))
        if found is None:
            logger.warning("resume: no complete checkpoint in %s, training from step 0", checkpoint_dir(config))
        return found
    if not is_complete_checkpoint(config.resume):
        raise ValueError(
            f"resume={config.resume!r} is not a complete Trainer checkpoint folder (no readable {TRAINER_STATE_NAME})"
        )
    return str(config.resume)


def warn_config_changes(config: TrainConfig, checkpoint: str | Path) -> None:
    """Warn when the resumed config differs from the checkpoint's in a key that changes what is computed."""
    path = Path(checkpoint) / CONFIG_NAME
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as saved
    keys = (set(saved) | set(current)) - RESUME_FREE_KEYS
    changed = sorted(k for k in keys if saved.get(k) != current.get(k))
    if changed:
        message = (
            f"Resuming from {checkpoint} with a config that differs in {changed}: the run will not end where an "
            "uninterrupted run of either config would"
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=3)


def loss_own_state(loss: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The loss's own persistent state (learned projections), without the student model's weights."""
    return {k: v for k, v in loss.state_dict().items() if not k.startswith("model.")}


class LEAPTrainer(SentenceTransformerTrainer):
    """``SentenceTransformerTrainer`` whose checkpoints also hold what the model folder does not: the loss's own
    parameters (the projections of a wider teacher; the optimizer state already covers them) and the run's
    config. Both are written inside ``save_model``, before ``trainer_state.json``, so a checkpoint with a readable
    trainer state is complete."""

    leap_loss: LEAPLoss | None = None
    leap_config: dict[str, Any] | None = None

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if self.leap_loss is not None:
            own = loss_own_state(self.leap_loss)
            if own:
                torch.save(own, output_dir / LOSS_STATE_NAME)
        if self.leap_config is not None:
            write_json(self.leap_config, output_dir / CONFIG_NAME)

    def _load_from_checkpoint(self, checkpoint_path: str, *args, **kwargs) -> None:
        super()._load_from_checkpoint(checkpoint_path, *args, **kwargs)
        if self.leap_loss is None or not loss_own_state(self.leap_loss):
            return
        path = Path(checkpoint_path) / LOSS_STATE_NAME
        if not path.is_file():
            raise ValueError(
                f"{checkpoint_path} has no {LOSS_STATE_NAME}, but this loss has parameters of its own "
                f"({sorted(loss_own_state(self.leap_loss))}): it was not written by st_leap.training"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        result = self.leap_loss.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("model.")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{path} does not match the loss: missing {missing}, unexpected {result.unexpected_keys}"
            )


class LossStepSync(TrainerCallback):
    """At train begin, sets the LEAPLoss step counter (the progress of its student-weight ramp) to the Trainer's
    global step: 0 for a new run, the checkpoint's step for a resumed one."""

    def __init__(self, loss: LEAPLoss) -> None:
        self.loss = loss

    def on_train_begin(self, args, state, control, **kwargs):
        self.loss.step = state.global_step * args.gradient_accumulation_steps


class SaveEveryMinutes(TrainerCallback):
    """Asks the Trainer for a checkpoint when ``minutes`` of wall time have passed since the last one (checked
    after each step; under torchrun rank 0 decides for all)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = 60.0 * minutes
        self.last = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        due = time.perf_counter() - self.last >= self.seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([int(due)], device=args.device)
            torch.distributed.broadcast(flag, src=0)
            due = bool(flag.item())
        if due:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last = time.perf_counter()
