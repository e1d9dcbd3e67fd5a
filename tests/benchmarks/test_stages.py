"""The multi-stage summary adds up steps and training time across stages and reads each stage's own results."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.train_recipe import stages


def _stage(path: Path, name: str, model: str, steps: int, seconds: float, exit_rate: float) -> None:
    metrics = {
        "stsb_full": 0.82,
        "stsb_per_layer": [0.1, 0.2, 0.3, 0.4, 0.5, 0.82],
        "cos_to_final_3_5": 0.9,
        "exits": {"0.95": {"exit_rate": exit_rate, "expected_layers": 6 - 2 * exit_rate, "stsb_exited": 0.79}},
    }
    info = {"config": {"model": model, "max_seq_length": 64}, "steps": steps, "train_seconds": seconds}
    (path / f"{name}.json").write_text(json.dumps({"run_info": info, "metrics": metrics}))


def test_stages_accumulate_and_pick_up_scifact(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "STAGES", tmp_path)
    monkeypatch.setattr(stages, "SCIFACT", tmp_path)
    _stage(tmp_path, "a", "minilm", 2000, 600.0, 0.5)
    _stage(tmp_path, "b", "runs/a", 300, 120.0, 0.7)
    (tmp_path / "pre_a_full_depth_beir_scifact.json").write_text(json.dumps({"ndcg": {"NDCG@10": 0.6}}))
    rows = stages.collect(["a:pre_a", "b"], "0.95")
    assert [r["cumulative_steps"] for r in rows] == [2000, 2300]
    assert [r["cumulative_train_minutes"] for r in rows] == [10.0, 12.0]
    assert [r["exit_rate"] for r in rows] == [0.5, 0.7]
    assert rows[0]["ndcg10_full"] == 0.6 and rows[0]["ndcg10_theta095"] is None
    assert rows[1]["ndcg10_full"] is None and rows[1]["starts_from"] == "runs/a"
    md = stages.markdown("x", rows, "0.95", "cmd")
    assert "| 2300 |" not in md and "300 (2300)" in md and "60.00 / -" in md
