from __future__ import annotations

import json

import pytest

from st_leap.evaluation.sweep import (
    choose_threshold,
    decision_table,
    mark_pareto,
    sweep,
)
from st_leap.reporting import write_sweep_report


def _row(theta, stsb, reduction):
    return {
        "theta": theta,
        "stsb": stsb,
        "layer_reduction": reduction,
        "expected_layers": 6 / reduction,
        "exit_rate": 0.5,
    }


FULL = _row(None, 80.0, 1.0)
ROWS = [_row(0.99, 79.9, 1.1), _row(0.95, 79.5, 1.5), _row(0.90, 77.0, 2.5), _row(0.93, 79.0, 1.4)]


def test_choose_threshold_largest_reduction_within_budget():
    """The pick is the largest layer reduction among thresholds whose drop stays within the budget."""
    row, reason = choose_threshold(ROWS, FULL, 0.5)
    assert row["theta"] == 0.95
    assert "theta=0.95" in reason and "rejected" in reason and "theta=0.9 " in reason
    assert choose_threshold(ROWS, FULL, 5.0)[0]["theta"] == 0.90
    assert choose_threshold(ROWS, FULL, 0.1)[0]["theta"] == 0.99


def test_choose_threshold_falls_back_to_full_depth():
    """When every threshold loses too much, full depth is picked and the reason says so; bad budgets raise."""
    row, reason = choose_threshold(ROWS, FULL, 0.05)
    assert row["theta"] is None and reason.startswith("full depth")
    with pytest.raises(ValueError, match="max_quality_drop"):
        choose_threshold(ROWS, FULL, -1.0)


def test_mark_pareto_and_decision_table():
    """theta=0.93 is dominated by 0.95 (better on both axes); the decision table has one row per budget."""
    rows = mark_pareto([dict(r) for r in ROWS])
    assert {r["theta"]: r["pareto"] for r in rows} == {0.99: True, 0.95: True, 0.90: True, 0.93: False}
    table = decision_table(rows, FULL, budgets=(0.5, 5.0))
    assert [r["theta"] for r in table] == [0.95, 0.90]
    assert table[0]["delta"] == pytest.approx(-0.5)


def test_sweep_rows_and_report(eval_model, sts_pairs, tmp_path):
    """The sweep has a full-depth row (E[layers] = L) and one row per theta; the report writes JSON, markdown, PNG."""
    result = sweep(eval_model, (0.9, 0.93), pairs=sts_pairs, exit_min_layer=2, nn_k=5, show_progress_bar=False)
    assert result["full"]["expected_layers"] == 4 and result["full"]["exit_rate"] == 0.0
    assert [r["theta"] for r in result["rows"]] == [0.9, 0.93]
    assert result["rows"][0]["expected_layers"] == pytest.approx(2.0)
    assert result["rows"][0]["layer_reduction"] == pytest.approx(2.0)
    assert result["exit_min_layer"] == 2 and "package_versions" in result["run_info"]
    paths = write_sweep_report(result, tmp_path, "sweep")
    assert json.loads(paths["json"].read_text())["rows"][1]["theta"] == 0.93
    assert "Pareto table" in paths["md"].read_text() and "Decision table" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 1000


def test_sweep_replay_matches_encode(eval_model, sts_pairs):
    """Replaying the exit rule on one full-depth pass gives the encode path's exit layers and scores."""
    kwargs = dict(pairs=sts_pairs, exit_min_layer=2, nn_k=5, show_progress_bar=False)
    encoded = sweep(eval_model, (0.92, 0.93, 0.94), **kwargs)
    replayed = sweep(eval_model, (0.92, 0.93, 0.94), method="replay", **kwargs)
    for a, b in zip([encoded["full"], *encoded["rows"]], [replayed["full"], *replayed["rows"]], strict=True):
        assert a["distribution"] == b["distribution"]
        assert a["stsb"] == pytest.approx(b["stsb"], abs=1e-4)
        assert a.get("nn_at_k") == pytest.approx(b.get("nn_at_k"))


def test_sweep_static_depths_beside_thresholds(eval_model, sts_pairs):
    """Static depths are rows of their own (every text at layer n), the same by encode and by replay, and a model
    whose saved default is a static depth is still swept against the whole encoder."""
    kwargs = dict(pairs=sts_pairs, exit_min_layer=2, nn_k=5, show_progress_bar=False, static_depths=[1, 3])
    encoded = sweep(eval_model, (0.93,), **kwargs)
    kinds = [(r["kind"], r["theta"], r["truncate_layers"]) for r in encoded["rows"]]
    assert kinds == [("adaptive", 0.93, None), ("static", None, 1), ("static", None, 3)]
    assert encoded["rows"][1]["distribution"] == [sum(encoded["full"]["distribution"]), 0, 0, 0]
    assert encoded["rows"][2]["layer_reduction"] == pytest.approx(4 / 3)
    replayed = sweep(eval_model, (0.93,), method="replay", **kwargs)
    for a, b in zip(encoded["rows"], replayed["rows"], strict=True):
        assert a["distribution"] == b["distribution"] and a["stsb"] == pytest.approx(b["stsb"], abs=1e-4)
    eval_model[0].truncate_layers = 2
    try:
        again = sweep(eval_model, (0.93,), **kwargs)
    finally:
        eval_model[0].truncate_layers = None
    assert again["full"]["expected_layers"] == 4 and again["full"]["stsb"] == pytest.approx(encoded["full"]["stsb"])
