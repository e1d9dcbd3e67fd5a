from __future__ import annotations

import json

import pytest
import torch

from st_leap.diagnostics import diagnose, time_encode
from st_leap.model import from_pretrained
from st_leap.reporting import diagnose_report, plot_diagnose
from tests.conftest import SENTENCES, stock_model


@pytest.fixture(scope="module")
def report(tiny_bert_dir):
    return diagnose(stock_model(tiny_bert_dir), SENTENCES * 2, thresholds=(0.5, 0.9, 0.95), exit_min_layer=2,
                    measure_overhead=False, show_progress_bar=False)


def test_diagnose_per_layer_curves(report):
    """One value per layer; the final layer's similarity to itself is 1; adjacent cosine is undefined for l <= k."""
    num_layers = report["num_layers"]
    assert len(report["similarity_to_final"]) == num_layers
    assert report["similarity_to_final"][-1] == pytest.approx(1.0, abs=1e-5)
    assert report["adjacent_similarity"][0] is None and len(report["adjacent_similarity"]) == num_layers
    assert len(report["contraction_ratio"]) == num_layers - 1
    assert all(g > 0 for g in report["contraction_ratio"])


def test_diagnose_exit_rates_fall_with_threshold(report):
    """A stricter theta never exits more samples, and E[layers] agrees with the counts."""
    rates = [row["exit_rate"] for row in report["thresholds"].values()]
    assert rates == sorted(rates, reverse=True)
    for row in report["thresholds"].values():
        assert sum(row["counts"]) == report["num_sentences"]
        assert row["expected_layers"] == pytest.approx(
            sum((i + 1) * c for i, c in enumerate(row["counts"])) / report["num_sentences"]
        )


def test_diagnose_matches_real_encode(tiny_bert_dir, report):
    """The exit counts diagnose reports are the ones the early-exit module produces when encoding."""
    model = from_pretrained(tiny_bert_dir)
    for theta, row in report["thresholds"].items():
        model.encode(SENTENCES * 2, exit_threshold=float(theta), exit_min_layer=2)
        assert model[0].exit_stats.counts == row["counts"]


def test_diagnose_verdict_names_failed_checks(report):
    """The verdict lists exactly the checks that failed."""
    verdict = report["verdict"]
    assert verdict["failed"] == [name for name, check in verdict["checks"].items() if not check["passed"]]
    assert verdict["exit_compatible"] == (not verdict["failed"])


def test_diagnose_overhead_and_outputs(tiny_bert_dir, tmp_path):
    """With timing on, the report carries a measured overhead, prints as a table, and plots to a PNG."""
    model = stock_model(tiny_bert_dir)
    result = diagnose(model, SENTENCES, exit_min_layer=2, overhead_sentences=4, show_progress_bar=False)
    overhead = result["monitoring_overhead"]
    assert overhead["full_depth_seconds_median"] > 0 and overhead["monitored_seconds_median"] > 0
    assert type(model[0]).__name__ == "Transformer", "diagnose must not convert the caller's model"
    text = diagnose_report(result, "tiny")
    assert "verdict" in text and "monitoring overhead" in text
    json.dumps(result)
    png = plot_diagnose(result, tmp_path / "d.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diagnose_rejects_bad_input(tiny_bert_dir):
    """No sentences, a bare string, or a bad theta are errors."""
    model = stock_model(tiny_bert_dir)
    with pytest.raises(ValueError, match="at least one"):
        diagnose(model, [], measure_overhead=False)
    with pytest.raises(ValueError, match="list of strings"):
        diagnose(model, "a man", measure_overhead=False)
    with pytest.raises(ValueError, match="exit_threshold"):
        diagnose(model, SENTENCES, thresholds=(1.2,), measure_overhead=False, show_progress_bar=False)


def test_time_encode_reports_every_setting(tiny_bert_dir):
    """time_encode times each setting, with ratio 1 for the reference and exit stats per setting."""
    model = from_pretrained(tiny_bert_dir)
    timed = time_encode(model, SENTENCES, {"full": {"exit_threshold": None}, "exit": {"exit_threshold": 0.01, "exit_min_layer": 2}},
                        repeats=2)
    assert timed["full"]["ratio_to_reference"] == pytest.approx(1.0)
    assert len(timed["exit"]["seconds"]) == 2
    assert timed["full"]["exit_stats"]["exit_rate"] == 0.0
    assert torch.isfinite(torch.tensor(timed["exit"]["seconds_median"]))
    # speed-up: the median of the per-round reference / own time, with its 25th-75th percentile band
    per_round = sorted(r / t for t, r in zip(timed["exit"]["seconds"], timed["full"]["seconds"]))
    assert timed["exit"]["speedup"] == pytest.approx(sum(per_round) / 2)
    assert timed["exit"]["speedup_band"] == pytest.approx([per_round[0] + 0.25 * (per_round[1] - per_round[0]),
                                                           per_round[0] + 0.75 * (per_round[1] - per_round[0])])
    assert timed["full"]["speedup"] == pytest.approx(1.0) and timed["full"]["speedup_band"] == pytest.approx([1.0, 1.0])
