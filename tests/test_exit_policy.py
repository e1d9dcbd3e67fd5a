from __future__ import annotations

import math

import pytest
import torch

from st_leap.exit_policy import (
    ExitStats,
    converged,
    default_min_layer,
    exit_layers_from_pooled,
    first_checked_layer,
    mean_pool,
    validate_exit_args,
)


def test_validate_exit_args_accepts_and_normalises():
    """Valid settings come back normalised (float theta, int layers); None theta means full depth."""
    assert validate_exit_args(1, 2, 3, 6) == (1.0, 2, 3)
    assert validate_exit_args(None, 1, 6, 6) == (None, 1, 6)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0.0, 1, 3, 6), "exit_threshold"),
        ((-0.5, 1, 3, 6), "exit_threshold"),
        ((1.0001, 1, 3, 6), "exit_threshold"),
        ((math.nan, 1, 3, 6), "exit_threshold"),
        ((True, 1, 3, 6), "exit_threshold"),
        ((0.9, 0, 3, 6), "exit_patience"),
        ((0.9, 6, 3, 6), "exit_patience"),
        ((0.9, 1.0, 3, 6), "exit_patience"),
        ((0.9, 1, 0, 6), "exit_min_layer"),
        ((0.9, 1, 7, 6), "exit_min_layer"),
        ((0.9, 1, "3", 6), "exit_min_layer"),
    ],
)
def test_validate_exit_args_rejects(args, name):
    """Out-of-range or non-numeric settings raise a ValueError naming the argument and its range."""
    with pytest.raises(ValueError, match=rf"{name}.*(\(0, 1\]|\[1, )"):
        validate_exit_args(*args)


def test_default_min_layer_is_half_depth():
    """l_min defaults to half the depth and never below 2."""
    assert [default_min_layer(n) for n in (2, 4, 6, 12, 24)] == [2, 2, 3, 6, 12]
    assert first_checked_layer(1, 3) == 3 and first_checked_layer(3, 2) == 4


def test_mean_pool_ignores_padding():
    """Padding tokens do not change the masked mean."""
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))


def test_converged_is_cosine_at_least_theta():
    """The rule is cos >= theta, inclusive."""
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert converged(a, b, 1.0).tolist() == [True, False, False]
    assert converged(a, b, math.cos(math.pi / 4) - 1e-6).tolist() == [True, True, False]


def test_exit_layers_from_pooled_follows_algorithm_1():
    """First layer l >= max(l_min, k+1) with cos(p_l, p_{l-k}) >= theta; never before, L when never."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # sample 0 converges from layer 2 on; sample 1 only between layers 3 and 4; sample 2 never
    pooled = torch.stack(
        [
            torch.stack([e2, e1, e1, e1, e1, e2]),
            torch.stack([e1, e2, e1, e2, e2, e1]),
            torch.stack([e1, e2, e1, e2, e1, e2]),
        ]
    )
    assert exit_layers_from_pooled(pooled, 0.9, 1, 1).tolist() == [2, 4, 5]
    assert exit_layers_from_pooled(pooled, 0.9, 1, 3).tolist() == [3, 4, 5]
    # k=2 compares p_l with p_{l-2}: alternating states converge at once
    assert exit_layers_from_pooled(pooled, 0.9, 2, 1).tolist() == [3, 3, 3]


def test_exit_stats_summaries():
    """counts, E[layers], exit rate and layer reduction follow from the exit layers."""
    stats = ExitStats(4)
    stats.update(torch.tensor([2, 4, 4, 3]))
    stats.update(torch.tensor([2]))
    assert stats.counts == [0, 2, 1, 2]
    assert stats.num_samples == 5
    assert stats.expected_layers == pytest.approx(3.0)
    assert stats.exit_rate == pytest.approx(0.6)
    assert stats.layer_reduction == pytest.approx(4 / 3)
    assert math.isnan(ExitStats(4).expected_layers)


def test_ExitStats_counts_merges_and_checks_layers():
    """ExitStats is the one counter: counts from layers or counts, merged across calls, depth taken from the first
    counts when left open; layers outside 1..L are an error."""
    stats = ExitStats.from_exit_layers(torch.tensor([1, 3, 3]), 3)
    assert stats.counts == [1, 0, 2] and stats.fractions == [1 / 3, 0.0, 2 / 3]
    total = ExitStats().merge(stats).merge(ExitStats(3, [0, 1, 0]))
    assert total.num_layers == 3 and total.counts == [1, 1, 2] and total.num_samples == 4
    assert total.expected_layers == pytest.approx(9 / 4) and total.exit_rate == pytest.approx(0.5)
    with pytest.raises(ValueError, match="1..3"):
        stats.update([4])
    with pytest.raises(ValueError, match="counts has 2 layers, expected 3"):
        stats.add_counts([1, 1])


def test_per_role_settings_are_completed_and_checked():
    """A per-role mapping is completed from its "default" key (else the module default); unknown keys fail."""
    from st_leap.exit_policy import for_role, per_role, role_of, validate_exit_settings

    assert per_role("exit_threshold", 0.9, None) == 0.9
    assert per_role("exit_threshold", {"query": 0.9}, None) == {"query": 0.9, "document": None, "default": None}
    assert per_role("exit_patience", {"default": 2, "query": 1}, 1) == {"query": 1, "document": 2, "default": 2}
    assert [role_of(t) for t in ("query", "document", None, "classification")] == [
        "query",
        "document",
        "default",
        "default",
    ]
    assert for_role({"query": 0.9, "document": None, "default": None}, "query") == 0.9
    with pytest.raises(ValueError, match="exit_threshold given per role"):
        per_role("exit_threshold", {"queries": 0.9}, None)
    theta, k, l_min, depth = validate_exit_settings({"query": 0.95, "document": None}, 1, {"query": 2}, None, 6)
    assert theta == {"query": 0.95, "document": None, "default": None}
    assert l_min == {"query": 2, "document": 3, "default": 3}  # None -> half the depth, per role
    assert (k, depth) == (1, None)
    with pytest.raises(ValueError, match=r"exit_threshold must be in \(0, 1\].*role 'document'"):
        validate_exit_settings({"query": 0.9, "document": 1.5}, 1, 3, None, 6)
    with pytest.raises(ValueError, match=r"exit_min_layer must be in \[1, 6\].*role 'query'"):
        validate_exit_settings(0.9, 1, {"query": 7, "default": 3}, None, 6)
