"""The user's own calibration data, read and checked before any model loads.

Three kinds, each a small dataclass that :func:`st_leap.calibrate` takes as is (or reads from a path with
:func:`read_user_data`):

- :class:`ScoredPairs`: sentence pairs with a similarity score (a TSV, CSV or JSONL file with the columns
  ``sentence1``, ``sentence2``, ``score``); quality is the Spearman correlation of their cosine with the scores.
- :class:`RetrievalData`: a BEIR-format folder (``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``,
  ``qrels/<split>.tsv``); quality is NDCG@10.
- :class:`Texts`: unlabeled texts, one a line (or a JSON-lines file with a ``text`` field); quality is the
  agreement with full depth.

STS-B (:func:`read_stsb`, the default when no data is given) is scored pairs like any other.

Every reader raises ``ValueError`` naming the file and the line of the first problem (a missing column, a score
that is not a number, an empty file, qrels naming unknown ids, fewer than two texts), so a bad file fails at once,
not after a model has loaded and encoded for minutes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The file helpers live in st_leap.files (below both this module and st_leap.corpus); imported here by name, as
# before, for code that imports them from this module.
from st_leap.files import file_line, open_text, read_json_lines, require_file

__all__ = [
    "ScoredPairs",
    "RetrievalData",
    "Texts",
    "read_pairs",
    "read_beir",
    "read_texts",
    "read_stsb",
    "read_user_data",
    "as_user_data",
]

PAIR_COLUMNS = ("sentence1", "sentence2", "score")


@dataclass
class ScoredPairs:
    """Sentence pairs with similarity scores (any scale: only their ranking counts)."""

    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    source: str = "pairs"

    kind = "pairs"

    def __post_init__(self) -> None:
        if not len(self.sentences1) == len(self.sentences2) == len(self.scores):
            raise ValueError(
                f"{self.source}: sentences1, sentences2 and scores differ in length "
                f"({len(self.sentences1)}, {len(self.sentences2)}, {len(self.scores)})"
            )
        if len(self.scores) < 2:
            raise ValueError(f"{self.source}: calibration needs at least 2 scored pairs, got {len(self.scores)}")
        if len(set(self.scores)) < 2:
            raise ValueError(f"{self.source}: every pair has the same score, so no ranking can be measured")

    def texts(self) -> list[str]:
        """The distinct sentences, in first-seen order."""
        return list(dict.fromkeys([*self.sentences1, *self.sentences2]))


@dataclass
class RetrievalData:
    """A retrieval collection: ``corpus`` (id -> text the model reads), ``queries`` (id -> text; only the queries
    with relevance judgements) and ``qrels`` (query id -> {document id: relevance})."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str = "beir"

    kind = "beir"

    def __post_init__(self) -> None:
        if not self.queries:
            raise ValueError(f"{self.source}: no query has a relevance judgement above 0")
        if len(self.corpus) < 2:
            raise ValueError(f"{self.source}: the corpus needs at least 2 documents, got {len(self.corpus)}")


@dataclass
class Texts:
    """Unlabeled texts (at least two); quality is measured as agreement with full depth."""

    texts: list[str]
    source: str = "texts"
    kind = "texts"

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        if len(self.texts) < 2:
            raise ValueError(f"{self.source}: calibration needs at least 2 texts, got {len(self.texts)}")


UserData = ScoredPairs | RetrievalData | Texts


def _score(value: Any, path: Path, line: int) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{file_line(path, line)}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise ValueError(f"{file_line(path, line)}: score {value!r} is not a finite number")
    return score


def _text(value: Any, name: str, path: Path, line: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{file_line(path, line)}: {name} is missing or empty")
    return value


def read_pairs(path: str | Path) -> ScoredPairs:
    """Read scored sentence pairs: ``.jsonl`` (one object a line) or a delimited file with a header row (``.csv``:
    commas, anything else: tabs), each with ``sentence1``, ``sentence2`` and ``score``.

    Raises:
        ValueError: naming the file and the line of a missing column, an empty sentence or a score that is not a
            number, or an empty file.
    """
    path = Path(path)
    require_file(path, "pairs file")
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    if path.suffix in (".jsonl", ".json") or path.name.endswith(".jsonl.gz"):
        for number, obj in read_json_lines(path):
            missing = [c for c in PAIR_COLUMNS if c not in obj]
            if missing:
                raise ValueError(
                    f"{file_line(path, number)}: missing {', '.join(missing)} (need {', '.join(PAIR_COLUMNS)})"
                )
            s1.append(_text(obj["sentence1"], "sentence1", path, number))
            s2.append(_text(obj["sentence2"], "sentence2", path, number))
            scores.append(_score(obj["score"], path, number))
    else:
        delimiter = "," if path.suffix == ".csv" else "\t"
        try:
            with open_text(path) as f:
                reader = csv.reader(
                    f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
                )
                header = next(reader, None)
                if header is None or not any(cell.strip() for cell in header):
                    raise ValueError(f"{file_line(path, 1)}: no header row (need {', '.join(PAIR_COLUMNS)})")
                names = [cell.strip().lower() for cell in header]
                missing = [c for c in PAIR_COLUMNS if c not in names]
                if missing:
                    raise ValueError(
                        f"{file_line(path, 1)}: the header lacks the column(s) {', '.join(missing)} "
                        f"(need {', '.join(PAIR_COLUMNS)}, separated by {'commas' if delimiter == ',' else 'tabs'})"
                    )
                columns = [names.index(c) for c in PAIR_COLUMNS]
                for row in reader:
                    number = reader.line_num
                    if not any(cell.strip() for cell in row):
                        continue
                    if len(row) <= max(columns):
                        raise ValueError(f"{file_line(path, number)}: {len(row)} column(s), need {max(columns) + 1}")
                    s1.append(_text(row[columns[0]], "sentence1", path, number))
                    s2.append(_text(row[columns[1]], "sentence2", path, number))
                    scores.append(_score(row[columns[2]], path, number))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error.reason})") from None
    if not scores:
        raise ValueError(f"{file_line(path, 1)}: no pairs in the file")
    return ScoredPairs(s1, s2, scores, source=str(path))


def read_beir(folder: str | Path, split: str = "test") -> RetrievalData:
    """Read and check a BEIR-format folder: ``corpus.jsonl[.gz]`` and ``queries.jsonl[.gz]`` (``_id``, ``text``,
    optional ``title``) and ``qrels/<split>.tsv`` (a header, then ``query-id``, ``corpus-id``, ``score``).

    A document is read as ``title + " " + text`` (as mteb and BEIR do). Only the queries with a judgement above 0
    are kept, as BEIR does.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file and the line of a bad record (an empty query among them; an empty document
            stays in the corpus, with one warning), a non-integer relevance, qrels naming a query or document the
            folder does not hold, or an empty file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"BEIR folder {folder} does not exist")

    def find(stem: str) -> Path:
        for candidate in (folder / f"{stem}.jsonl", folder / f"{stem}.jsonl.gz"):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"BEIR folder {folder} has no {stem}.jsonl or {stem}.jsonl.gz")

    def records(path: Path, what: str) -> tuple[dict[str, str], dict[str, int]]:
        require_file(path, f"{what} file")
        texts: dict[str, str] = {}
        lines: dict[str, int] = {}
        for number, obj in read_json_lines(path):
            if "_id" not in obj:
                raise ValueError(f"{file_line(path, number)}: missing _id")
            key = str(obj["_id"])
            if key in texts:
                raise ValueError(f"{file_line(path, number)}: _id {key!r} repeats line {lines[key]}")
            text = obj.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{file_line(path, number)}: missing text")
            title = obj.get("title") or ""
            if not isinstance(title, str):
                raise ValueError(f"{file_line(path, number)}: title is not a string")
            full = (title + " " + text).strip() if title else text.strip()
            if not full and what != "documents":  # an empty document stays in the index; an empty query is an error
                raise ValueError(f"{file_line(path, number)}: empty title and text")
            texts[key], lines[key] = full, number
        if not any(texts.values()):
            raise ValueError(f"{file_line(path, 1)}: no {what} with text in the file")
        empty = [key for key, value in texts.items() if not value]
        if empty:
            import warnings

            warnings.warn(
                f"{path}: {len(empty)} of {len(texts)} {what} have an empty title and text (ids "
                f"{', '.join(map(repr, empty[:5]))}{', ...' if len(empty) > 5 else ''}); they stay in the corpus",
                stacklevel=3,
            )
        return texts, lines

    corpus_path, queries_path = find("corpus"), find("queries")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise FileNotFoundError(f"BEIR folder {folder} has no qrels/{split}.tsv")
    corpus, _ = records(corpus_path, "documents")
    all_queries, _ = records(queries_path, "queries")
    require_file(qrels_path, "qrels file")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)  # header: query-id, corpus-id, score
        for row in reader:
            number = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < 3:
                raise ValueError(
                    f"{file_line(qrels_path, number)}: {len(row)} column(s), need query-id, corpus-id, score"
                )
            query_id, doc_id, value = row[0].strip(), row[1].strip(), row[2].strip()
            if query_id not in all_queries:
                raise ValueError(f"{file_line(qrels_path, number)}: query id {query_id!r} is not in {queries_path.name}")
            if doc_id not in corpus:
                raise ValueError(f"{file_line(qrels_path, number)}: corpus id {doc_id!r} is not in {corpus_path.name}")
            score = _score(value, qrels_path, number)
            if score != int(score):
                raise ValueError(f"{file_line(qrels_path, number)}: relevance {value!r} is not a whole number")
            qrels.setdefault(query_id, {})[doc_id] = int(score)
    if not qrels:
        raise ValueError(f"{file_line(qrels_path, 2)}: no judgements in the file")
    qrels = {q: docs for q, docs in qrels.items() if any(rel > 0 for rel in docs.values())}
    queries = {q: all_queries[q] for q in all_queries if q in qrels}
    return RetrievalData(corpus, queries, qrels, source=str(folder))


def read_texts(path: str | Path) -> Texts:
    """Read unlabeled texts, one a line (blank lines skipped), or from a JSON-lines file (``.jsonl[.gz]``, e.g. a
    BEIR ``queries.jsonl`` or ``corpus.jsonl``): each object's ``text``, after its ``title`` when it has one.

    Raises:
        ValueError: naming the file (and line) when it is empty, not UTF-8, a JSON line has no text, or it holds
            fewer than 2 texts.
    """
    path = Path(path)
    require_file(path, "texts file")
    texts: list[str] = []
    last = 0
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        for last, obj in read_json_lines(path):
            text, title = obj.get("text"), obj.get("title") or ""
            if not isinstance(text, str) or not isinstance(title, str) or not (title + text).strip():
                raise ValueError(f"{file_line(path, last)}: missing text")
            texts.append((title + " " + text).strip() if title else text.strip())
        if len(texts) < 2:
            raise ValueError(f"{file_line(path, max(last, 1))}: the file holds {len(texts)} text(s); need at least 2")
        return Texts(texts, source=str(path))
    try:
        with open_text(path) as f:
            for number, line in enumerate(f, start=1):
                last = number
                if line.strip():
                    texts.append(line.strip())
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason})") from None
    if len(texts) < 2:
        raise ValueError(
            f"{file_line(path, max(last, 1))}: the file holds {len(texts)} non-blank text(s); calibration needs at least 2"
        )
    return Texts(texts, source=str(path))


def read_user_data(kind: str, path: str | Path, split: str = "test") -> UserData:
    """Read one kind of calibration data: ``"pairs"`` (a file), ``"beir"`` (a folder, ``split`` of its qrels) or
    ``"texts"`` (a file)."""
    if kind == "pairs":
        return read_pairs(path)
    if kind == "beir":
        return read_beir(path, split)
    if kind == "texts":
        return read_texts(path)
    raise ValueError(f"kind must be 'pairs', 'beir' or 'texts', got {kind!r}")


def read_stsb(split: str = "dev") -> ScoredPairs:
    """STS-B ``split`` (from the shared data folder, :func:`st_leap.resources.load_stsb`) as scored pairs: the
    calibration data when none is given (``dev``, so the test split stays untouched)."""
    from st_leap import resources

    s1, s2, scores = resources.load_stsb(split)
    return ScoredPairs(s1, s2, scores, source=f"STS-B {split}")


def as_user_data(data: Any, split: str | None = None) -> UserData:
    """Calibration data from what :func:`st_leap.calibrate` was given: ``None`` or ``"stsb"`` (STS-B ``split``,
    ``dev`` by default, :func:`read_stsb`), a parsed :class:`ScoredPairs` / :class:`RetrievalData` /
    :class:`Texts`, a one-entry mapping ``{"pairs" | "beir" | "texts": path}`` (``"split"`` may be added for BEIR,
    ``test`` by default), a ``(sentences1, sentences2, scores)`` tuple, or a list of texts."""
    if data is None or (isinstance(data, str) and data.lower() == "stsb"):
        return read_stsb(split or "dev")
    if isinstance(data, ScoredPairs | RetrievalData | Texts):
        return data
    if isinstance(data, Mapping):
        spec = dict(data)
        split = str(spec.pop("split", split or "test"))
        if len(spec) != 1 or next(iter(spec)) not in ("pairs", "beir", "texts"):
            raise ValueError(f"data must name one of 'pairs', 'beir', 'texts' (and optionally 'split'), got {data!r}")
        kind, path = next(iter(spec.items()))
        return read_user_data(kind, path, split)
    if isinstance(data, tuple) and len(data) == 3 and not any(isinstance(part, str) for part in data):
        return ScoredPairs(list(data[0]), list(data[1]), [float(s) for s in data[2]], source="the given pairs")
    if isinstance(data, Sequence) and not isinstance(data, str):
        return Texts([str(t) for t in data if str(t).strip()], source="the given texts")
    raise ValueError(
        f"data must be 'stsb', a {{'pairs'|'beir'|'texts': path}} mapping, ScoredPairs, RetrievalData, Texts, "
        f"a (sentences1, sentences2, scores) tuple or a list of texts, got {type(data).__name__}"
    )
