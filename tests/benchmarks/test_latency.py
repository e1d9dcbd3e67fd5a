"""The latency benchmark compares like with like: a forced exit at layer l computes what the truncated copy does."""

from __future__ import annotations

import torch

from benchmarks.latency import run as latency
from st_leap.model import as_early_exit
from tests.conftest import SENTENCES, stock_model


def test_forced_exit_equals_truncated_copy(smooth_bert_dir):
    """Forcing every sample out at layer l gives the truncated l-layer copy's embeddings, and the copy is shallower."""
    stock = stock_model(smooth_bert_dir)
    leap = as_early_exit(stock_model(smooth_bert_dir))
    for layer in (2, 3):
        truncated = latency.truncated_copy(stock, layer)
        assert len(truncated[0].auto_model.encoder.layer) == layer
        forced = leap.encode(SENTENCES, exit_threshold=latency.FORCE_THETA, exit_min_layer=layer, convert_to_tensor=True)
        assert leap[0].exit_stats.counts[layer - 1] == len(SENTENCES)
        torch.testing.assert_close(forced, truncated.encode(SENTENCES, convert_to_tensor=True), atol=1e-5, rtol=0)
    assert len(stock[0].auto_model.encoder.layer) == 4, "the original model must stay whole"
