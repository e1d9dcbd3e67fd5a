from __future__ import annotations

import json

import pytest

import st_leap
from st_leap.cli import main


@pytest.fixture()
def tiny_env(monkeypatch, tiny_data_dir):
    monkeypatch.setenv("ST_LEAP_DATA", str(tiny_data_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tiny_data_dir


def test_cli_calibrate_picks_and_saves(tiny_env, eval_model_dir, tmp_path, capsys):
    """`st-leap calibrate MODEL --max-quality-drop X` prints its pick and reason, writes the report, saves the default."""
    out, saved = tmp_path / "cal", tmp_path / "saved"
    code = main(
        [
            "calibrate",
            eval_model_dir,
            "--max-quality-drop",
            "100",
            "--thresholds",
            "0.9,0.99",
            "--exit-min-layer",
            "2",
            "--out",
            str(out),
            "--save-model",
            str(saved),
        ]
    )
    assert code == 0
    result = json.loads((out / "calibrate.json").read_text())
    assert result["split"] == "dev" and result["max_quality_drop"] == 100
    # any drop is allowed: the largest speed-up wins, the static cut at layer 1 (4x on a 4-layer model)
    assert result["picked"]["kind"] == "static" and result["picked"]["truncate_layers"] == 1
    assert result["runner_up"]["layer_reduction"] < result["picked"]["layer_reduction"]
    assert result["margin"]["layer_reduction"] == pytest.approx(
        result["picked"]["layer_reduction"] - result["runner_up"]["layer_reduction"]
    )
    assert "picked static L1" in capsys.readouterr().out
    assert (out / "calibrate.md").exists() and (out / "calibrate.png").exists()
    reloaded = st_leap.load(str(saved))
    assert reloaded[0].truncate_layers == 1 and reloaded[0].exit_threshold is None


def test_cli_calibrate_thresholds_only(tiny_env, eval_model_dir, tmp_path, capsys):
    """--no-static compares exit thresholds only; the pick is saved as the default threshold."""
    out, saved = tmp_path / "cal", tmp_path / "saved"
    code = main(["calibrate", eval_model_dir, "--max-quality-drop", "100", "--thresholds", "0.9,0.99",
                 "--exit-min-layer", "2", "--no-static", "--out", str(out), "--save-model", str(saved)])
    assert code == 0
    result = json.loads((out / "calibrate.json").read_text())
    assert result["picked"]["theta"] == 0.9 and result["static_depths"] == []
    assert "picked theta=0.9" in capsys.readouterr().out
    reloaded = st_leap.load(str(saved))
    assert reloaded[0].exit_threshold == 0.9 and reloaded[0].exit_min_layer == 2 and reloaded[0].truncate_layers is None
    card = (saved / "README.md").read_text()  # the model card carries what calibration measured (issue 16)
    assert "Measured by st_leap" in card and "calibrated operating point" in card
    assert f"{result['picked']['stsb']:.2f}" in card and "No exit rate" not in card


def test_cli_calibrate_saves_the_pick_for_one_role(tiny_env, eval_model_dir, tmp_path):
    """--role query saves the picked threshold for encode_query only; documents and plain encode keep full depth."""
    out, saved = tmp_path / "cal", tmp_path / "saved"
    code = main(["calibrate", eval_model_dir, "--max-quality-drop", "100", "--thresholds", "0.9,0.99",
                 "--exit-min-layer", "2", "--no-static", "--out", str(out), "--save-model", str(saved),
                 "--role", "query"])
    assert code == 0
    reloaded = st_leap.load(str(saved))
    assert reloaded[0].exit_threshold == {"query": 0.9, "document": None, "default": None}
    assert reloaded[0].exit_min_layer == {"query": 2, "document": 2, "default": 2}


def test_cli_evaluate_writes_tables_and_mteb_results(tiny_env, eval_model_dir, tmp_path):
    """`st-leap evaluate MODEL --tasks stsb,scifact --thresholds ...` runs full depth + each theta through mteb."""
    out = tmp_path / "ev"
    code = main(
        [
            "evaluate",
            eval_model_dir,
            "--tasks",
            "stsb,scifact",
            "--thresholds",
            "0.9",
            "--exit-min-layer",
            "2",
            "--source",
            "local",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads((out / "evaluate.json").read_text())
    assert [run["theta"] for run in result["runs"]] == [None, 0.9]
    assert result["runs"][1]["tasks"]["STSBenchmark"]["exit_stats"]["expected_layers"] == pytest.approx(2.0)
    assert result["rows"][0]["layer_reduction"] == pytest.approx(2.0)
    assert (out / "evaluate.md").exists() and (out / "evaluate.png").exists()
    assert len(list((out / "mteb" / "results").rglob("model_meta.json"))) == 2


def test_cli_evaluate_rejects_unknown_task(tiny_env, tmp_path, capsys):
    """An unknown task name stops at argument parsing, before any model loads, naming the allowed tasks."""
    with pytest.raises(SystemExit) as error:
        main(["evaluate", str(tmp_path / "no-such-model"), "--tasks", "stsb,msmarco", "--out", str(tmp_path)])
    assert error.value.code == 2
    assert "msmarco" in capsys.readouterr().err
