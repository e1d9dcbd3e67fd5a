from __future__ import annotations

import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize

import st_leap
from st_leap.model import as_early_exit
from tests.conftest import stock_model


def test_from_pretrained_converts_plain_model_with_defaults(tiny_bert_dir):
    """A plain model gets an EarlyExitTransformer with full depth, k=1 and l_min = half the depth."""
    model = st_leap.from_pretrained(tiny_bert_dir)
    first = model[0]
    assert isinstance(first, st_leap.EarlyExitTransformer)
    assert (first.exit_threshold, first.exit_patience, first.exit_min_layer) == (None, 1, 2)
    assert set(model.get_model_kwargs()) >= {"exit_threshold", "exit_patience", "exit_min_layer"}


def test_from_pretrained_overrides_only_given_settings(tiny_bert_dir, tmp_path):
    """Reloading a saved model keeps its saved settings except the ones passed explicitly."""
    st_leap.from_pretrained(tiny_bert_dir, exit_threshold=0.9, exit_patience=2, exit_min_layer=3).save(str(tmp_path))
    assert st_leap.load(str(tmp_path))[0].exit_threshold == 0.9
    again = st_leap.from_pretrained(str(tmp_path), exit_threshold=None)
    assert (again[0].exit_threshold, again[0].exit_patience, again[0].exit_min_layer) == (None, 2, 3)


def test_as_early_exit_shares_weights(tiny_bert_dir):
    """Conversion reuses the loaded weights instead of copying them."""
    model = stock_model(tiny_bert_dir)
    weights = model[0].auto_model.embeddings.word_embeddings.weight
    as_early_exit(model, exit_threshold=0.8)
    assert model[0].auto_model.embeddings.word_embeddings.weight is weights
    assert model[0].exit_threshold == 0.8


def test_as_early_exit_rejects_other_first_modules():
    """A model that does not start with a Transformer gets a clear error."""
    with pytest.raises(ValueError, match="first module is a Transformer"):
        as_early_exit(SentenceTransformer(modules=[Normalize()]))


def test_from_pretrained_rejects_bad_settings(tiny_bert_dir):
    """Invalid default settings fail at load time, naming the argument."""
    with pytest.raises(ValueError, match="exit_min_layer"):
        st_leap.from_pretrained(tiny_bert_dir, exit_min_layer=7)
