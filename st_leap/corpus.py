"""The documents of your index, read once and turned into query-like texts (ours, not the LEAP paper's).

A user who keeps an index owns the documents in it, and they are the best training and fitting data a shallow
query encoder can get: the same protocol as unsupervised domain adaptation (inverse cloze, GPL), which uses the
target corpus and never its queries. This module reads a corpus and makes the texts:

- :func:`read_corpus`: a BEIR folder (``corpus.jsonl[.gz]`` inside), a ``corpus.jsonl[.gz]`` file (``_id``,
  ``text``, optional ``title``) or a text file of one document per line (ids are the line numbers, blank lines are
  not documents). A malformed corpus, or one without any text, raises ``ValueError`` naming the file and the line,
  before any model loads. A record with an empty title and text is a document all the same: it stays in the corpus,
  in file order (your index holds it, and your document embeddings keep their rows), gives no query-like text, and
  one warning counts such documents (:attr:`Corpus.empty`).
- :func:`query_texts`: query-like texts of documents (titles, sentences, short spans of a sentence),
  deduplicated, shuffled with a seed, each with the index of the document it came from.
- :func:`read_queries`: past queries of the index, when you keep a log of them (no labels): an optional extra
  source of training texts, real queries toward the index model's embedding of the same query.
- :func:`split_documents` and :func:`corpus_dev`: documents held out of training (documents with text only), and a
  dev split made from them only (their texts retrieving their own documents from the whole index; never a query set
  or a qrels file).

Example:
    ::

        from st_leap.corpus import query_texts, read_corpus

        corpus = read_corpus("data/scifact")              # a BEIR folder, a corpus.jsonl(.gz) or a .txt
        texts, owners = query_texts(corpus, max_texts=20_000, seed=0)
        corpus.documents[owners[0]]                       # the document texts[0] was taken from
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from st_leap.files import file_line, open_text, read_json_lines, require_file

__all__ = ["Corpus", "QUERY_KINDS", "read_corpus", "query_texts", "split_documents", "corpus_dev", "read_document_embeddings"]

#: The kinds of query-like text :func:`query_texts` makes from a document.
QUERY_KINDS = ("title", "sentence", "span")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")

#: How many ids of empty documents the warning of :func:`read_corpus` names.
EMPTY_IDS_SHOWN = 5

_warned: set[str] = set()  # the empty-document warnings given in this process: each is given once


@dataclass
class Corpus:
    """Documents of an index: ``ids``, ``titles`` (``""`` when none) and ``texts``, in file order.

    ``documents`` is what the index model reads: ``title + " " + text`` (as mteb and BEIR do), or the text alone.
    A document with neither (``""``) keeps its place, as the index keeps it: :attr:`empty` lists such documents; they
    give no query-like text (:func:`query_texts`) and are never held out as dev documents (:func:`split_documents`).

    Raises:
        ValueError: the lists differ in length, there is no document, an id repeats, or no document has any text.
    """

    ids: list[str]
    titles: list[str]
    texts: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.titles) == len(self.texts)):
            raise ValueError("ids, titles and texts must have one entry per document")
        if not self.ids:
            raise ValueError(f"{self.source or 'the corpus'}: no documents")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"{self.source or 'the corpus'}: document ids repeat")
        if not self.with_text:
            raise ValueError(f"{self.source or 'the corpus'}: no document has any text (all have an empty title and text)")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def documents(self) -> list[str]:
        """The text the index model reads of each document, in corpus order (``""`` for an empty document)."""
        return [(t + " " + x).strip() if t else x.strip() for t, x in zip(self.titles, self.texts)]

    @property
    def empty(self) -> list[int]:
        """The indices of the documents whose title and text are both empty (or blank), in corpus order."""
        return [i for i in range(len(self.ids)) if not _has_text(self, i)]

    @property
    def with_text(self) -> list[int]:
        """The indices of the other documents, in corpus order: those that give query-like texts."""
        return [i for i in range(len(self.ids)) if _has_text(self, i)]


def _has_text(corpus: Corpus, i: int) -> bool:
    return bool(corpus.titles[i].strip() or corpus.texts[i].strip())


def _corpus_file(path: Path) -> Path:
    if path.is_dir():
        for candidate in (path / "corpus.jsonl", path / "corpus.jsonl.gz"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"corpus folder {path} has no corpus.jsonl or corpus.jsonl.gz")
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} does not exist")
    return path


def read_corpus(path: str | Path) -> Corpus:
    """Read and check a corpus: a BEIR folder, a ``corpus.jsonl[.gz]`` file, or a text file of one document a line
    (``.txt``, ``.txt.gz`` or any other name that is not ``.jsonl``; blank lines are not documents, ids are line
    numbers).

    A JSON record with an empty (or blank) title and text is a document all the same and keeps its place: the index
    holds it, the index model embeds it, and document embeddings keep one row per id (:func:`read_document_embeddings`).
    It gives no training, map-fitting or dev text. One ``UserWarning`` (once per file in a process) says how many
    there are and names the first ids; :attr:`Corpus.empty` lists them.

    Args:
        path: A BEIR folder (``corpus.jsonl`` or ``corpus.jsonl.gz`` inside), a ``corpus.jsonl[.gz]`` file (``_id``,
            ``text``, optional ``title``) or a text file.

    Returns:
        The :class:`Corpus`, in file order.

    Raises:
        FileNotFoundError: naming the missing file or folder.
        ValueError: naming the file and the line of a record that is not a JSON object, lacks ``_id`` or a string
            ``text``, has a title that is not a string, or repeats an id; of an empty file or one without documents;
            or of the first record when every document has an empty title and text.
    """
    file = _corpus_file(Path(path))
    require_file(file, "corpus file")
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    if file.name.endswith((".jsonl", ".jsonl.gz")):
        lines: dict[str, int] = {}
        for number, obj in read_json_lines(file):
            if "_id" not in obj:
                raise ValueError(f"{file_line(file, number)}: missing _id")
            key = str(obj["_id"])
            if key in lines:
                raise ValueError(f"{file_line(file, number)}: _id {key!r} repeats line {lines[key]}")
            text, title = obj.get("text"), obj.get("title") or ""
            if not isinstance(text, str):
                raise ValueError(f"{file_line(file, number)}: missing text")
            if not isinstance(title, str):
                raise ValueError(f"{file_line(file, number)}: title is not a string")
            lines[key] = number
            ids.append(key)
            titles.append(title.strip())
            texts.append(text.strip())
    else:
        try:
            with open_text(file) as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        ids.append(str(number))
                        titles.append("")
                        texts.append(line.strip())
        except UnicodeDecodeError as error:
            raise ValueError(f"{file}: not UTF-8 text ({error.reason})") from None
    if not ids:
        raise ValueError(f"{file_line(file, 1)}: no documents in the file")
    if not any(titles) and not any(texts):  # only JSON records can get here: blank lines of a text file are skipped
        first = min(lines.values()) if lines else 1
        raise ValueError(
            f"{file_line(file, first)}: no document has any text (all {len(ids):,} have an empty title and text)"
        )
    corpus = Corpus(ids, titles, texts, source=str(file))
    _warn_empty(corpus)
    return corpus


def read_queries(path: str | Path) -> list[str]:
    """Read past queries of an index (a query log; no labels): a text file of one query a line (``.gz`` too; blank
    lines skipped) or a JSON-lines file (``.jsonl[.gz]``, BEIR's ``queries.jsonl``) of records with a ``text``.
    Repeated queries are kept once, in first-seen order.

    Args:
        path: The file.

    Returns:
        The distinct queries, stripped.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file and the line of a JSON record that is not an object or lacks a string ``text``; of
            an empty file or one without a query; of a file that is not UTF-8 text.
    """
    file = Path(path)
    require_file(file, "queries file")
    queries: list[str] = []
    if file.name.endswith((".jsonl", ".jsonl.gz")):
        for number, obj in read_json_lines(file):
            text = obj.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{file_line(file, number)}: missing text")
            queries.append(text.strip())
    else:
        try:
            with open_text(file) as f:
                queries = [line.strip() for line in f]
        except UnicodeDecodeError as error:
            raise ValueError(f"{file}: not UTF-8 text ({error.reason})") from None
    queries = list(dict.fromkeys(q for q in queries if q))
    if not queries:
        raise ValueError(f"{file_line(file, 1)}: no query in the file")
    return queries


def _warn_empty(corpus: Corpus) -> None:
    """One ``UserWarning`` per corpus file and process: how many documents are empty, and the first ids."""
    empty = corpus.empty
    if not empty:
        return
    one = len(empty) == 1
    ids = ", ".join(repr(corpus.ids[i]) for i in empty[:EMPTY_IDS_SHOWN])
    more = ", ..." if len(empty) > EMPTY_IDS_SHOWN else ""
    message = (
        f"{corpus.source}: {len(empty):,} of {len(corpus):,} documents {'has' if one else 'have'} an empty title and "
        f"text (id{'' if one else 's'} {ids}{more}); {'it stays' if one else 'they stay'} in the index, in order, but "
        f"{'gives' if one else 'give'} no training, map-fitting or dev text"
    )
    if message not in _warned:  # each step of a run reads the corpus again: say it once
        _warned.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (after ``.``, ``!`` or ``?`` followed by a capital letter or a digit)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _document_queries(
    title: str, text: str, kinds: Sequence[str], rng: random.Random, min_words: int, max_words: int, span_words: tuple[int, int]
) -> list[str]:
    out: list[str] = []
    if "title" in kinds and title and len(title.split()) >= 2:
        out.append(title)
    parts = [s for s in sentences(text) if min_words <= len(s.split())]
    if "sentence" in kinds:
        out.extend(" ".join(s.split()[:max_words]) for s in parts)
    if "span" in kinds:
        for s in parts:
            words = s.split()
            n = rng.randint(*span_words)
            if len(words) > n:
                start = rng.randrange(len(words) - n + 1)
                out.append(" ".join(words[start : start + n]).strip(" ,;:()"))
    return out


def query_texts(
    corpus: Corpus,
    documents: Sequence[int] | None = None,
    *,
    kinds: Sequence[str] = QUERY_KINDS,
    max_texts: int | None = None,
    max_per_document: int | None = None,
    min_words: int = 4,
    max_words: int = 48,
    span_words: tuple[int, int] = (3, 8),
    seed: int = 12345,
) -> tuple[list[str], list[int]]:
    """Query-like texts of a corpus, each with the index (into ``corpus``) of the document it came from.

    From each document: its title (two words or more), each of its sentences of ``min_words`` words or more (cut at
    ``max_words``) and, per sentence, one span of ``span_words`` consecutive words (keyword-like queries); an empty
    document (:attr:`Corpus.empty`) gives none. Texts are
    deduplicated (a text that occurs in two documents keeps the first), shuffled with ``seed``, capped at
    ``max_per_document`` per document, then at ``max_texts``.

    Args:
        corpus: The documents (:func:`read_corpus`).
        documents: Indices of the documents to use (default: all), e.g. the training side of
            :func:`split_documents`.
        kinds: Which of ``"title"``, ``"sentence"``, ``"span"`` to make.
        max_texts: Cap on the number of texts.
        max_per_document: Cap per document.
        min_words: Shortest sentence used, in words.
        max_words: Sentences are cut to this many words.
        span_words: ``(shortest, longest)`` span in words.
        seed: Seed of the spans and the shuffle.

    Returns:
        ``(texts, owners)``: the texts and each one's document index.

    Raises:
        ValueError: unknown ``kinds``, a bad ``span_words``, or no text could be made.
    """
    bad = [k for k in kinds if k not in QUERY_KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {QUERY_KINDS}, got {list(kinds)!r}")
    if not 1 <= span_words[0] <= span_words[1]:
        raise ValueError(f"span_words must be (shortest, longest) with 1 <= shortest <= longest, got {span_words!r}")
    rng = random.Random(seed)
    indices = range(len(corpus)) if documents is None else documents
    seen: set[str] = set()
    pairs: list[tuple[str, int]] = []
    for i in indices:
        if not _has_text(corpus, i):
            continue  # an empty document: in the index, but nothing to make a query of
        for text in _document_queries(corpus.titles[i], corpus.texts[i], kinds, rng, min_words, max_words, span_words):
            key = " ".join(text.lower().split())
            if key and key not in seen:
                seen.add(key)
                pairs.append((text, i))
    rng.shuffle(pairs)
    if max_per_document is not None:
        count: dict[int, int] = {}
        kept = []
        for text, i in pairs:
            count[i] = count.get(i, 0) + 1
            if count[i] <= max_per_document:
                kept.append((text, i))
        pairs = kept
    if max_texts is not None:
        pairs = pairs[:max_texts]
    if not pairs:
        raise ValueError(f"{corpus.source or 'the corpus'}: no query-like texts of kinds {list(kinds)} could be made")
    return [t for t, _ in pairs], [i for _, i in pairs]


def split_documents(corpus: Corpus, dev_documents: int, seed: int = 12345) -> tuple[list[int], list[int]]:
    """Hold ``dev_documents`` documents out of training, drawn at random (``seed``); nothing of a dev document is ever
    a training text.

    Dev documents are drawn from the documents with text only (:attr:`Corpus.with_text`): an empty document stays on
    the training side, where it gives no text. Without empty documents this is a draw from all of them.

    Args:
        corpus: The documents (:func:`read_corpus`).
        dev_documents: How many documents to hold out.
        seed: Seed of the draw.

    Returns:
        ``(train, dev)``: sorted document indices, together every document of the corpus.

    Raises:
        ValueError: ``dev_documents`` is negative or would leave no document with text for training.
    """
    candidates = corpus.with_text
    if not 0 <= dev_documents < len(candidates):
        empty = len(corpus) - len(candidates)
        documents = f"{len(candidates)} documents" + (f" with text ({empty} empty)" if empty else "")
        raise ValueError(f"dev_documents must be in 0..{len(candidates) - 1} for {documents}, got {dev_documents}")
    random.Random(seed).shuffle(candidates)
    dev = set(candidates[:dev_documents])
    return [i for i in range(len(corpus)) if i not in dev], sorted(dev)


def corpus_dev(
    corpus: Corpus, dev: Sequence[int], *, num_queries: int = 500, kinds: Sequence[str] = QUERY_KINDS, seed: int = 12345
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """A dev split from held-out documents only: up to ``num_queries`` query-like texts of the ``dev`` documents
    (at most two per document), each relevant to its own document, against the whole corpus (the index keeps every
    document, empty ones too; an empty document is never the source of a dev query, :func:`query_texts`).

    Args:
        corpus: The documents (:func:`read_corpus`).
        dev: The held-out document indices (:func:`split_documents`).
        num_queries: Cap on the number of dev queries.
        kinds: Which query-like texts to make (:func:`query_texts`).
        seed: Seed of the texts.

    Returns:
        ``(queries, corpus, relevant_docs)`` in the format of sentence-transformers'
        ``InformationRetrievalEvaluator``.
    """
    texts, owners = query_texts(corpus, dev, kinds=kinds, max_texts=num_queries, max_per_document=2, seed=seed + 1)
    queries = {f"dev{i}": text for i, text in enumerate(texts)}
    relevant = {f"dev{i}": {corpus.ids[owner]} for i, owner in enumerate(owners)}
    return queries, dict(zip(corpus.ids, corpus.documents)), relevant


def read_document_embeddings(path: str | Path, corpus: Corpus):
    """Your index's document embeddings, as ``(len(corpus), D)`` float32 rows in corpus order.

    ``path`` is one of:

    - an ``.npz`` file with arrays ``ids`` (document ids) and ``embeddings`` (one row per id, any order; every
      corpus id must be there, other ids are ignored);
    - an ``.npy`` array whose rows are already in corpus order;
    - a FAISS index file (any other file; needs ``faiss-cpu``): vectors through ``reconstruct_n``. An
      ``IndexIDMap`` / ``IndexIDMap2`` carries int64 ids: when every corpus id is an integer written as a string,
      each corpus id is matched to the FAISS id of the same value; otherwise the FAISS ids must be the documents'
      positions ``0..N-1``. An index without ids (``IndexFlatIP``...) holds one row per document, in corpus order
      (:func:`st_leap.stores.read_faiss`);
    - a LanceDB table (needs ``lancedb``): ``DB_FOLDER::TABLE`` or ``DB_FOLDER/TABLE.lance``, optionally followed by
      ``?id=COLUMN&vector=COLUMN`` (default columns ``id`` and ``vector``), matched to the corpus ids like an
      ``.npz`` (:func:`st_leap.stores.read_lancedb`).

    Args:
        path: The file, or the LanceDB table spec.
        corpus: The documents of the index (:func:`read_corpus`).

    Returns:
        ``(len(corpus), D)`` float32 rows in corpus order.

    Raises:
        FileNotFoundError: the file, the LanceDB database folder or its table does not exist.
        ImportError: a FAISS index or a LanceDB table without its package installed (naming the ``pip install``).
        ValueError: naming the file or table: a missing array or column, a corpus id without a row, a row count
            that does not match, a FAISS index type that cannot give back its vectors.
    """
    import numpy as np

    from st_leap import stores

    if stores.is_lancedb_spec(path):
        return stores.read_lancedb(path, corpus.ids)
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"document embeddings {path} is a folder: for a LanceDB table give DB_FOLDER::TABLE or the TABLE.lance "
            "folder; otherwise an .npz, an .npy or a FAISS index file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"document embeddings {path} do not exist")
    head = b""
    if path.suffix not in (".npy", ".npz"):
        with open(path, "rb") as f:
            head = f.read(6)
        if not head.startswith((b"\x93NUMPY", b"PK")):  # neither an .npy nor an .npz (a zip) under another name
            return stores.read_faiss(path, corpus.ids)
    if path.suffix == ".npy" or head.startswith(b"\x93NUMPY"):
        array = np.load(path)
        if array.ndim != 2 or len(array) != len(corpus):
            raise ValueError(f"{path}: shape {array.shape}, need one row per document ({len(corpus)}, dim)")
        return array.astype(np.float32)
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("ids", "embeddings") if k not in data]
        if missing:
            raise ValueError(f"{path}: no array named {missing[0]!r} (need 'ids' and 'embeddings')")
        ids, array = [str(i) for i in data["ids"]], data["embeddings"]
    if array.ndim != 2 or len(array) != len(ids):
        raise ValueError(f"{path}: {len(ids)} ids but embeddings of shape {array.shape}")
    row = {key: i for i, key in enumerate(ids)}
    absent = [key for key in corpus.ids if key not in row]
    if absent:
        raise ValueError(f"{path}: {len(absent)} corpus id(s) have no embedding, e.g. {absent[0]!r}")
    return array[[row[key] for key in corpus.ids]].astype(np.float32)
