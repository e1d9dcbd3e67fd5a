from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

import st_leap
from tests.conftest import build_tiny_model_dir

EVAL_WORDS = (
    "a the man woman dog cat is are eating playing running sitting on in with food ball guitar park house street "
    "red blue big small child car drives plays sings walks reads book table water music"
).split()


def _build_tiny_st(path, hidden: int = 32, layers: int = 4, seed: int = 0) -> str:
    """Save a tiny random BERT sentence-transformer (mean pooling + normalize) to ``path``."""
    hf_dir = build_tiny_model_dir(
        path / "hf",
        "bert",
        0.1,  # small init: adjacent layers agree, so thresholds around 0.9 make samples exit
        layers,
        seed,
        hidden=hidden,
        words=EVAL_WORDS,
        max_position_embeddings=64,
    )
    transformer = Transformer(hf_dir, max_seq_length=32)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension()), Normalize()], device="cpu"
    )
    model.save(str(path / "st"))
    return str(path / "st")


def random_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(EVAL_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="session")
def eval_model_dir(tmp_path_factory) -> str:
    return _build_tiny_st(tmp_path_factory.mktemp("eval_tiny"), hidden=32, layers=4, seed=0)


@pytest.fixture(scope="session")
def _eval_model(eval_model_dir) -> SentenceTransformer:
    return st_leap.from_pretrained(eval_model_dir, device="cpu")


@pytest.fixture()
def eval_model(_eval_model) -> SentenceTransformer:
    """A tiny 4-layer early-exit model (fresh copy per test)."""
    return copy.deepcopy(_eval_model)


@pytest.fixture()
def sts_pairs() -> tuple[list[str], list[str], list[float]]:
    rng = random.Random(1)
    s1 = random_sentences(40, seed=2)
    s2 = random_sentences(40, seed=3)
    return s1, s2, [rng.random() for _ in s1]


@pytest.fixture()
def tiny_beir_dir(tmp_path) -> str:
    """A BEIR-format folder: 12 documents (some without title), 5 queries, 4 of them with qrels."""
    docs = random_sentences(12, seed=4)
    corpus = [
        {"_id": f"d{i}", "title": (docs[(i + 1) % 12][:10] if i % 3 else ""), "text": t} for i, t in enumerate(docs)
    ]
    queries = [{"_id": f"q{i}", "text": t} for i, t in enumerate(random_sentences(5, seed=5))]
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in corpus) + "\n", encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n", encoding="utf-8")
    rows = ["query-id\tcorpus-id\tscore", "q0\td1\t1", "q0\td2\t1", "q1\td5\t1", "q2\td7\t2", "q3\td11\t1"]
    (tmp_path / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(tmp_path)


@pytest.fixture()
def eval_sentences() -> list[str]:
    return random_sentences(30, seed=7)


@pytest.fixture()
def tiny_data_dir(tmp_path_factory, tiny_beir_dir, sts_pairs) -> Path:
    """A shared-data layout (stsb/{dev,test}.tsv with 0-5 scores, beir/scifact) holding the tiny fixtures."""
    root = tmp_path_factory.mktemp("tiny_data")
    s1, s2, scores = sts_pairs
    (root / "stsb").mkdir()
    rows = ["sentence1\tsentence2\tscore"] + [f"{a}\t{b}\t{5 * s:.3f}" for a, b, s in zip(s1, s2, scores, strict=True)]
    for split in ("dev", "test"):
        (root / "stsb" / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    shutil.copytree(tiny_beir_dir, root / "beir" / "scifact")
    return root
