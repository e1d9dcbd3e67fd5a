"""Property-based tests of ``encode`` through :class:`st_leap.EarlyExitTransformer` (issue 17): any mix of texts and
any valid exit setting gives no crash, batch invariance, full depth equal to the stock model and exit layers in
range; bad types fail with an error naming the argument, before any layer runs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from st_leap.diagnostics import layer_pooled_states
from st_leap.exit_policy import first_checked_layer
from tests.conftest import WORDS, stock_model
from tests.test_modules import early_model

TEXT = st.one_of(
    st.just(""),
    st.sampled_from([" ", "\t\n", "   \u00a0 "]),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join),
    st.lists(st.sampled_from(WORDS), min_size=150, max_size=300).map(" ".join),  # beyond max_seq_length
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),  # any unicode
    st.sampled_from(["café naïve 東京 Ελλάδα", "🙂🚀 emoji only 🎉", "ctrl\x00\x07\x1b chars", "a" * 500]),
)
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_models(smooth_bert_dir):
    return early_model(smooth_bert_dir), stock_model(smooth_bert_dir)


@FUZZ
@given(
    texts=st.lists(TEXT, min_size=1, max_size=12).flatmap(
        lambda xs: st.lists(st.sampled_from(xs), min_size=len(xs), max_size=len(xs) + 4)  # with duplicates
    ),
    batch_size=st.integers(1, 16),
    threshold=st.one_of(st.none(), st.floats(0.01, 1.0)),
    patience=st.integers(1, 3),
    min_layer=st.integers(1, 4),
)
def test_encode_fuzz_invariants(fuzz_models, texts, batch_size, threshold, patience, min_layer):
    model, stock = fuzz_models
    depth = model[0].num_layers
    kwargs = dict(exit_threshold=threshold, exit_patience=patience, exit_min_layer=min_layer)
    out = model.encode(texts, output_value=None, batch_size=batch_size, **kwargs)
    alone = model.encode(texts, output_value=None, batch_size=1, **kwargs)
    layers = torch.stack([o["exit_layer"] for o in out])
    embeddings = torch.stack([o["sentence_embedding"] for o in out])
    assert torch.isfinite(embeddings).all()
    lowest = first_checked_layer(patience, min_layer) if threshold is not None else depth
    assert bool(((layers >= min(lowest, depth)) & (layers <= depth)).all())
    alone_layers = torch.stack([o["exit_layer"] for o in alone])
    mismatch = (layers != alone_layers).nonzero().flatten().tolist()
    if mismatch:  # only a tie at theta (float noise between batch shapes) may flip a decision
        pooled = layer_pooled_states(model, [texts[i] for i in mismatch], show_progress_bar=False)
        for row, i in enumerate(mismatch):
            layer = int(min(layers[i], alone_layers[i]))
            cos = torch.nn.functional.cosine_similarity(pooled[row, layer], pooled[row, layer - patience], dim=-1)
            assert math.isclose(float(cos), threshold, abs_tol=1e-4), f"{texts[i]!r}: exit differs without a tie"
    same = [i for i in range(len(texts)) if i not in mismatch]
    torch.testing.assert_close(
        embeddings[same], torch.stack([alone[i]["sentence_embedding"] for i in same]), atol=1e-5, rtol=0
    )
    if threshold is None:
        assert bool((layers == depth).all())
        torch.testing.assert_close(
            embeddings, stock.encode(texts, batch_size=batch_size, convert_to_tensor=True), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(
    ("inputs", "kwargs", "error", "name"),
    [
        (["a dog", None], {}, TypeError, r"inputs\[1\]"),
        (["a dog", 7], {}, TypeError, r"inputs\[1\]"),
        ([b"bytes"], {}, TypeError, r"inputs\[0\]"),
        ([["a", ["nested"]]], {}, TypeError, r"inputs\[0\]"),
        (["a dog"], {"exit_threshold": float("nan")}, ValueError, "exit_threshold"),
        (["a dog"], {"exit_threshold": True}, ValueError, "exit_threshold"),
        (["a dog"], {"exit_threshold": "0.9"}, ValueError, "exit_threshold"),
        (["a dog"], {"exit_threshold": 0.9, "exit_patience": True}, ValueError, "exit_patience"),
        (["a dog"], {"exit_threshold": 0.9, "exit_min_layer": 2.0}, ValueError, "exit_min_layer"),
        (["a dog"], {"truncate_layers": 0}, ValueError, "truncate_layers"),
        (["a dog"], {"batch_size": -1}, ValueError, "batch_size"),
    ],
)
def test_encode_rejects_bad_types_before_any_layer_runs(fuzz_models, inputs, kwargs, error, name):
    model, _ = fuzz_models
    calls = []
    hook = model[0].auto_model.embeddings.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(error, match=name):
            model.encode(inputs, **kwargs)
    finally:
        hook.remove()
    assert not calls, "the model ran before the bad argument was reported"
