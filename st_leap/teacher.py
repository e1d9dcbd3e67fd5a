"""Precomputed teacher embeddings, cached on disk.

A live teacher costs one extra forward pass per training step. :func:`compute_teacher_embeddings` runs the
teacher once over a dataset (with a progress bar) and stores the final embedding, plus the pooled states of the
teacher layers the intermediate term needs, in a cache folder. The cache records a fingerprint of the teacher
(its module layout, config and weights) and of the dataset (the sentences, in order) and refuses to be reused
by a different teacher or dataset. :func:`teacher_dataset` turns the result into the ``(sentence, label)``
dataset that :class:`~st_leap.losses.LEAPLoss` reads as labels.

The cache folder is either one you name (``cache_dir``) or, with ``shared_cache=True`` (what
:func:`st_leap.training.train` uses when its config names no ``cache_dir``), a content-keyed folder of the shared
st_leap cache, like Hugging Face's own caches: ``<cache root>/teacher/<key>/``, with the cache root
``$ST_LEAP_CACHE``, else ``$XDG_CACHE_HOME/st_leap``, else ``~/.cache/st_leap``
(:func:`st_leap.resources.cache_dir`). ``<key>`` is a short hash of everything that determines the array
(:func:`cache_key`): the same teacher, sentences and layers find the same folder and reuse it; anything else gets
a folder of its own. Nothing is written into a model folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from st_leap import resources
from st_leap.exit_policy import mean_pool
from st_leap.reporting import write_text

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
#: The subfolder of the st_leap cache root that holds the shared teacher caches, one ``<key>`` folder each.
SHARED_SUBDIR = "teacher"
#: The ``meta.json`` fields that make up the key of a shared cache folder (:func:`cache_key`).
KEY_FIELDS = ("version", "teacher", "tokenizer", "max_seq_length", "teacher_dtype", "dataset", "num_sentences",
              "layers", "dtype")


def dataset_fingerprint(sentences: Sequence[str]) -> str:
    """SHA-256 over the sentences, in order (length-prefixed, so no two lists collide by concatenation)."""
    h = hashlib.sha256()
    for s in sentences:
        data = s.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def teacher_fingerprint(teacher: SentenceTransformer) -> str:
    """SHA-256 over the teacher's module types, Transformer config and every weight tensor."""
    h = hashlib.sha256()
    h.update(" ".join(type(m).__name__ for m in teacher).encode())
    config = getattr(getattr(teacher[0], "auto_model", None), "config", None)
    if config is not None:
        h.update(json.dumps(config.to_diff_dict(), sort_keys=True, default=str).encode())
    h.update(str(teacher.max_seq_length).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(teacher: SentenceTransformer) -> str:
    """SHA-256 over the teacher's tokenizer: its class and, for a fast tokenizer, its full definition (normalizer,
    pre-tokenizer, vocabulary, post-processor; not the truncation and padding state, which each call resets), else
    its vocabulary."""
    tokenizer = getattr(teacher, "tokenizer", None)
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    elif hasattr(tokenizer, "get_vocab"):
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()


def cache_key(meta: dict) -> str:
    """The shared-cache key of a cache's metadata: 16 hex digits of a SHA-256 over its :data:`KEY_FIELDS` (cache
    version, teacher and tokenizer fingerprints, max_seq_length, the teacher's parameter dtype, dataset
    fingerprint and size, stored layers, array dtype)."""
    fields = {key: meta.get(key) for key in KEY_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def shared_cache_root() -> Path:
    """The folder of the shared teacher caches: ``<st_leap cache root>/teacher`` (the root is ``$ST_LEAP_CACHE``,
    else ``$XDG_CACHE_HOME/st_leap``, else ``~/.cache/st_leap``). Delete it (or one ``<key>`` folder) to clear it."""
    return resources.cache_dir() / SHARED_SUBDIR


@dataclass(frozen=True)
class CacheInfo:
    """Where :func:`compute_teacher_embeddings` cached its array (``path``, None without caching) and whether it
    loaded an existing cache instead of running the teacher (``reused``)."""

    path: Path | None
    reused: bool


class CacheMismatchError(ValueError):
    """A cache folder holds teacher embeddings of another teacher, dataset or layer set."""


@torch.no_grad()
def compute_teacher_embeddings(
    teacher: SentenceTransformer,
    sentences: Sequence[str],
    cache_dir: str | Path | None = None,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    show_progress_bar: bool = True,
    shared_cache: bool = False,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, CacheInfo]:
    """Teacher embeddings of ``sentences``, computed once and cached in ``cache_dir`` (or the shared cache).

    Args:
        teacher: The teacher SentenceTransformer (run in eval mode, without gradients).
        sentences: The training sentences, in dataset order.
        cache_dir: Folder for ``embeddings.npy`` and ``meta.json``; None computes without caching (unless
            ``shared_cache``). An existing cache of the same teacher, dataset and layers is loaded instead of
            recomputed.
        layers: Teacher layers (1-based) whose masked-mean hidden states are stored after the final embedding
            (the order of ``LEAPLoss.teacher_layers()``); None stores the final embedding only.
        batch_size: Encoding batch size.
        show_progress_bar: Show a tqdm bar.
        shared_cache: Cache in ``<shared_cache_root()>/<cache_key(meta)>/`` instead of a named folder (only with
            ``cache_dir=None``): the same inputs reuse one folder, different inputs never share one.
        return_info: Also return a :class:`CacheInfo` (the cache folder, and whether it was reused).

    Returns:
        ``float32`` array ``(N, D)`` (final only) or ``(N, 1 + len(layers), D)``; with ``return_info``, the tuple
        ``(array, CacheInfo)``.

    Raises:
        CacheMismatchError: if ``cache_dir`` holds a cache of another teacher, dataset or layer set (or a cache
            whose array does not match its ``meta.json``).
    """
    if shared_cache and cache_dir is not None:
        raise ValueError("pass either cache_dir or shared_cache=True, not both")
    sentences = list(sentences)
    layers = list(layers) if layers else []
    meta = _cache_meta(teacher, sentences, layers)
    checked = (("teacher", "teacher"), ("dataset", "dataset"), ("layers", "layer set"))
    if shared_cache:
        cache_dir = shared_cache_root() / meta["key"]
        checked += tuple((key, key) for key in KEY_FIELDS if key not in ("teacher", "dataset", "layers"))
    partial = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        meta_path, data_path = cache_dir / "meta.json", cache_dir / "embeddings.npy"
        if meta_path.exists():
            saved = json.loads(meta_path.read_text())
            for key, what in checked:
                if saved.get(key) != meta[key]:
                    raise CacheMismatchError(
                        f"The teacher-embedding cache in {str(cache_dir)!r} was made with a different {what} "
                        f"({key} {saved.get(key)!r} != {meta[key]!r}). Use another cache_dir or delete it."
                    )
            if data_path.exists():
                array = _load_checked(data_path, saved, cache_dir)
                logger.info("Teacher embeddings %s loaded from the cache %s", array.shape, cache_dir)
                return (array, CacheInfo(cache_dir, True)) if return_info else array
        partial = _PartialPass(cache_dir, meta)

    was_training = teacher.training
    teacher.eval()
    config = teacher[0].auto_model.config
    old_flag = getattr(config, "output_hidden_states", False)
    if layers:
        config.output_hidden_states = True
    # longest first, like SentenceTransformer.encode: batches of similar length pad little
    order = np.argsort([-len(s) for s in sentences], kind="stable")
    chunks = [partial.load()] if partial is not None and partial.exists() else []
    done = sum(len(c) for c in chunks)
    if done:
        logger.info("Teacher embeddings: resuming a stopped pass at %d of %d sentences (%s)", done, len(sentences),
                    cache_dir)
    try:
        with tqdm(total=len(sentences), initial=done, desc="Teacher embeddings", unit="text",
                  disable=not show_progress_bar) as bar:
            for start in range(done, len(sentences), batch_size):
                batch = [sentences[i] for i in order[start : start + batch_size]]
                features = teacher.preprocess(batch)
                features = {k: v.to(teacher.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
                out = teacher(features)
                final = out["sentence_embedding"].float()
                if layers:
                    hidden, mask = out["all_layer_embeddings"], out["attention_mask"]
                    rows = [final] + [mean_pool(hidden[layer], mask).float() for layer in layers]
                    chunks.append(torch.stack(rows, dim=1).cpu().numpy())
                else:
                    chunks.append(final.cpu().numpy())
                bar.update(len(batch))
                if partial is not None:
                    partial.maybe_save(chunks)
    except BaseException:  # stopped (Ctrl-C, a kill the process survives long enough for): keep what is done
        if partial is not None and sum(len(c) for c in chunks) > done:
            partial.maybe_save(chunks, force=True)
        raise
    finally:
        config.output_hidden_states = old_flag
        teacher.train(was_training)
    width = teacher.get_embedding_dimension()
    shape = (len(sentences), 1 + len(layers), width) if layers else (len(sentences), width)
    embeddings = np.zeros(shape, np.float32)
    if chunks:
        embeddings[order] = np.concatenate(chunks).astype(np.float32)

    if cache_dir is not None:
        _write_cache(cache_dir, meta, embeddings)
        partial.remove()
    return (embeddings, CacheInfo(cache_dir, False)) if return_info else embeddings


def write_shared_cache(
    teacher: SentenceTransformer, sentences: Sequence[str], embeddings: np.ndarray, layers: Sequence[int] | None = None
) -> Path:
    """Store ``embeddings`` (the teacher's, of ``sentences`` in order, as :func:`compute_teacher_embeddings` returns
    them) in the shared cache, so that a later ``compute_teacher_embeddings(teacher, sentences, shared_cache=True)``
    loads them instead of running the teacher: for example a prefix of a longer pass. Returns the cache folder."""
    sentences, layers = list(sentences), list(layers) if layers else []
    embeddings = np.asarray(embeddings, dtype=np.float32)
    width = teacher.get_embedding_dimension()
    shape = (len(sentences), 1 + len(layers), width) if layers else (len(sentences), width)
    if embeddings.shape != shape:
        raise ValueError(f"embeddings have shape {embeddings.shape}, {len(sentences)} sentences need {shape}")
    meta = _cache_meta(teacher, sentences, layers)
    cache_dir = shared_cache_root() / meta["key"]
    if not (cache_dir / "embeddings.npy").exists():
        _write_cache(cache_dir, meta, embeddings)
    return cache_dir


def _cache_meta(teacher: SentenceTransformer, sentences: list[str], layers: list[int]) -> dict:
    """The ``meta.json`` of a cache of ``teacher`` over ``sentences`` (its shared-cache ``key`` included)."""
    num_layers = int(teacher[0].auto_model.config.num_hidden_layers)
    bad = [x for x in layers if not isinstance(x, int) or not 1 <= x <= num_layers]
    if bad:
        raise ValueError(f"layers must be ints in 1..{num_layers}, got {layers!r}")
    meta = {
        "version": CACHE_VERSION,
        "teacher": teacher_fingerprint(teacher),
        "dataset": dataset_fingerprint(sentences),
        "num_sentences": len(sentences),
        "layers": layers,
        # Recorded for the shared-cache key (the checks of a named cache_dir use the three fields above only).
        "tokenizer": tokenizer_fingerprint(teacher),
        "max_seq_length": teacher.max_seq_length,
        "teacher_dtype": str(next(iter(teacher.parameters())).dtype).removeprefix("torch."),
        "dtype": "float32",
    }
    meta["key"] = cache_key(meta)
    return meta


def _write_cache(cache_dir: Path, meta: dict, embeddings: np.ndarray) -> None:
    # The array first, then the metadata, each through a temporary name renamed into place: a run killed mid-write
    # leaves no meta.json that vouches for a partial array.
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".embeddings.npy.tmp-{os.getpid()}"
    with tmp.open("wb") as f:
        np.save(f, embeddings)
    tmp.replace(cache_dir / "embeddings.npy")
    meta = {**meta, "shape": list(embeddings.shape), "dtype": str(embeddings.dtype), "sha256": _sha256(embeddings)}
    write_text(json.dumps(meta, indent=2), cache_dir / "meta.json")
    logger.info("Teacher embeddings %s computed and cached in %s", embeddings.shape, cache_dir)


#: How often a long pass into a cache folder saves what it has done (seconds), so that a stopped pass resumes.
PARTIAL_SAVE_SECONDS = 120.0


class _PartialPass:
    """The rows a pass into ``cache_dir`` has done so far (``partial.npy``, in the pass's longest-first order, and
    ``partial.json``, which vouches for it: the cache key and the row count and checksum), saved every
    :data:`PARTIAL_SAVE_SECONDS`; a later pass over the same inputs (same key) starts where it stopped. A partial
    pass of other inputs is ignored and replaced."""

    def __init__(self, cache_dir: Path, meta: dict) -> None:
        self.data = cache_dir / "partial.npy"
        self.info = cache_dir / "partial.json"
        self.key = meta["key"]
        self.last = time.monotonic()

    def exists(self) -> bool:
        if not (self.info.exists() and self.data.exists()):
            return False
        try:
            info = json.loads(self.info.read_text())
        except ValueError:
            return False
        return info.get("key") == self.key

    def load(self) -> np.ndarray:
        info = json.loads(self.info.read_text())
        array = np.load(self.data)
        if array.shape[0] != info.get("rows") or _sha256(array) != info.get("sha256"):
            logger.warning("The partial teacher pass in %s does not match its partial.json: starting over",
                           self.info.parent)
            return array[:0]
        return array

    def maybe_save(self, chunks: list[np.ndarray], force: bool = False) -> None:
        if not force and time.monotonic() - self.last < PARTIAL_SAVE_SECONDS:
            return
        array = np.concatenate(chunks).astype(np.float32)
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.info.unlink(missing_ok=True)  # no partial.json vouches for a half-written partial.npy
        tmp = self.data.parent / f".partial.npy.tmp-{os.getpid()}"
        with tmp.open("wb") as f:
            np.save(f, array)
        tmp.replace(self.data)
        write_text(json.dumps({"key": self.key, "rows": len(array), "sha256": _sha256(array)}), self.info)
        self.last = time.monotonic()

    def remove(self) -> None:
        self.info.unlink(missing_ok=True)
        self.data.unlink(missing_ok=True)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _load_checked(data_path: Path, meta: dict, cache_dir: Path) -> np.ndarray:
    """The cached array, if it is the one its metadata describes (shape, dtype, checksum)."""
    rebuild = f"Delete {str(cache_dir)!r} (or use another cache_dir) to rebuild it."
    try:
        array = np.load(data_path)
    except (ValueError, OSError, EOFError) as error:
        raise CacheMismatchError(f"The teacher-embedding cache {str(data_path)!r} cannot be read ({error}). {rebuild}") from error
    expected = {"shape": meta.get("shape"), "dtype": meta.get("dtype"), "sha256": meta.get("sha256")}
    found = {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": _sha256(array)}
    if expected["shape"] is None:  # a cache written before the checks: at least the row count must match
        if array.shape[0] != meta.get("num_sentences"):
            raise CacheMismatchError(
                f"The teacher-embedding cache {str(data_path)!r} holds {array.shape[0]} rows, its meta.json says "
                f"{meta.get('num_sentences')}. {rebuild}"
            )
        return array
    bad = [key for key in expected if expected[key] != found[key]]
    if bad:
        raise CacheMismatchError(
            f"The teacher-embedding cache {str(data_path)!r} does not match its meta.json "
            f"({', '.join(f'{k}: {found[k]!r} != {expected[k]!r}' for k in bad)}). {rebuild}"
        )
    return array


def teacher_dataset(sentences: Sequence[str], embeddings: np.ndarray, text_column: str = "sentence"):
    """A ``datasets.Dataset`` with the sentences and their teacher embeddings in a ``label`` column."""
    from datasets import Dataset

    if len(sentences) != len(embeddings):
        raise ValueError(
            f"sentences and embeddings must have the same length, got {len(sentences)} and {len(embeddings)}"
        )
    return Dataset.from_dict({text_column: list(sentences), "label": embeddings.tolist()})


def index_embeddings(
    index_model: SentenceTransformer,
    documents: Sequence[str],
    given: np.ndarray | None = None,
    *,
    batch_size: int = 32,
    show_progress_bar: bool = True,
) -> np.ndarray:
    """The index model's embeddings of ``documents`` at its own serving length, as an index holds them: ``given``
    (the user's own index, rows in ``documents`` order, checked for shape) or computed once and kept in the shared
    cache (:func:`compute_teacher_embeddings`), so every later run over the same corpus skips the pass."""
    if given is not None:
        given = np.asarray(given, dtype=np.float32)
        width = index_model.get_embedding_dimension()
        if given.shape != (len(documents), width):
            raise ValueError(
                f"document embeddings have shape {given.shape}, the corpus needs ({len(documents)}, {width})"
            )
        return given
    return compute_teacher_embeddings(
        index_model, list(documents), None, batch_size=batch_size, show_progress_bar=show_progress_bar,
        shared_cache=True,
    )
