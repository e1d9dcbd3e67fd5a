from __future__ import annotations

import numpy as np
import pytest

from st_leap.evaluation.consistency import (
    encode_with_exit_layers,
    evaluate_consistency,
    nearest_neighbors,
    nn_consistency,
    nn_overlap,
)
from st_leap.exit_policy import ExitStats


def _points(n: int = 30, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_nearest_neighbors_excludes_self_and_sorts_by_cosine():
    """Each row's neighbours never include itself and come nearest first (cosine, ties to the lower index)."""
    emb = _points()
    nn = nearest_neighbors(emb, k=5, block_size=7)
    assert not (nn == np.arange(len(emb))[:, None]).any()
    normed = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = normed @ normed.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(nn, np.argsort(-sims, axis=1, kind="stable")[:, :5])
    with pytest.raises(ValueError, match="k must be smaller"):
        nearest_neighbors(emb[:5], k=5)


def test_nn_consistency_identical_embeddings_is_perfect():
    """Early exit that changes nothing keeps every neighbour: NN@k = 1 and no failures."""
    emb = _points()
    result = nn_consistency(emb, emb * 3.0, [2] * 10 + [4] * 20, k=5, num_layers=4)
    assert result["mean"] == 1.0
    assert result["failure_rates"] == {"<0.5": 0.0, "<0.3": 0.0}
    assert [row["n"] for row in result["per_layer"]] == [0, 10, 0, 20]
    assert result["per_layer"][0]["mean"] is None


def test_nn_consistency_failure_rates_per_exit_layer():
    """Items that exited at a layer are scored by their own NN@k; failure rates count NN@k below 0.5 and 0.3."""
    full = _points(40, seed=1)
    early = full.copy()
    early[:10] = _points(10, seed=2)  # the first 10 items (exit layer 1) get unrelated embeddings
    layers = np.array([1] * 10 + [3] * 30)
    result = nn_consistency(full, early, layers, k=5, num_layers=3)
    overlap = nn_overlap(full, early, k=5)
    per = {row["layer"]: row for row in result["per_layer"]}
    assert per[1]["mean"] == pytest.approx(overlap[:10].mean())
    assert per[3]["mean"] == pytest.approx(overlap[10:].mean())
    assert per[1]["failure_rates"]["<0.5"] == pytest.approx((overlap[:10] < 0.5).mean())
    assert result["failure_rates"]["<0.3"] == pytest.approx((overlap < 0.3).mean())
    assert per[1]["mean"] < per[3]["mean"]


def test_ExitStats_distribution_counts_and_validates():
    """Counts per layer, shares, E[layers] and exit rate; layers outside 1..L are rejected."""
    dist = ExitStats.from_exit_layers([1, 2, 2, 4], 4).to_dict()
    assert dist["counts"] == [1, 2, 0, 1]
    assert dist["fractions"] == [0.25, 0.5, 0.0, 0.25]
    assert dist["expected_layers"] == pytest.approx(9 / 4)
    assert dist["exit_rate"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="1..4"):
        ExitStats.from_exit_layers([0, 5], 4)


def test_evaluate_consistency_on_model(eval_model, eval_sentences):
    """Per-text exit layers come from encode(output_value=None); full depth agrees with itself; the JSON is complete."""
    sentences = eval_sentences
    emb, layers, _ = encode_with_exit_layers(
        eval_model, sentences, exit_threshold=0.93, exit_min_layer=2, chunk_size=8
    )
    np.testing.assert_allclose(emb, eval_model.encode(sentences, exit_threshold=0.93, exit_min_layer=2), atol=1e-5)
    assert sorted(set(layers.tolist())) <= [2, 3, 4]
    full = evaluate_consistency(eval_model, sentences, exit_threshold=None, k=5, show_progress_bar=False)
    assert full["mean"] == 1.0 and full["distribution"]["exit_rate"] == 0.0
    early = evaluate_consistency(
        eval_model, sentences, exit_threshold=0.93, exit_min_layer=2, k=5, show_progress_bar=False
    )
    assert early["distribution"]["counts"] == np.bincount(layers - 1, minlength=4).tolist()
    assert early["exit_settings"] == {"exit_threshold": 0.93, "exit_patience": 1, "exit_min_layer": 2, "truncate_layers": None}
