from __future__ import annotations

import copy

import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

from tests.conftest import build_tiny_model_dir

WORDS = (
    "a the man woman dog cat is are eating playing running sitting on in with food ball guitar park house street "
    "red blue big small child car drives plays sings walks reads book table water music"
).split()


def build_tiny_bert(path, hidden: int = 32, layers: int = 4, seed: int = 0) -> str:
    """A tiny random BERT (wide init so cosines are not all ~1) and its tokenizer, saved to ``path``."""
    return build_tiny_model_dir(
        path, "bert", 0.5, layers, seed, hidden=hidden, words=WORDS, max_position_embeddings=64
    )


def tiny_model(path: str, max_seq_length: int = 16) -> SentenceTransformer:
    transformer = Transformer(path, max_seq_length=max_seq_length)
    return SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())], device="cpu")


@pytest.fixture(scope="session")
def leap_student_dir(tmp_path_factory) -> str:
    return build_tiny_bert(tmp_path_factory.mktemp("leap_student"), hidden=32, layers=4, seed=0)


@pytest.fixture(scope="session")
def leap_wide_teacher_dir(tmp_path_factory) -> str:
    return build_tiny_bert(tmp_path_factory.mktemp("leap_teacher"), hidden=48, layers=6, seed=1)


@pytest.fixture(scope="session")
def _leap_student(leap_student_dir) -> SentenceTransformer:
    return tiny_model(leap_student_dir)


@pytest.fixture()
def leap_student(_leap_student) -> SentenceTransformer:
    return copy.deepcopy(_leap_student)


@pytest.fixture()
def leap_sentences() -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(64)]


@pytest.fixture()
def make_tiny_model():
    """The factory ``tiny_model(path)`` (tests have no package, so they take it as a fixture)."""
    return tiny_model
