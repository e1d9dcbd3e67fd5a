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


FAST = ["--thresholds", "0.9,0.99", "--exit-min-layer", "2", "--time-sample", "8", "--repeats", "1"]


def saved_default(value, role: str):
    return value[role] if isinstance(value, dict) else value


def test_cli_calibrate_picks_and_saves(tiny_env, eval_model_dir, tmp_path, capsys):
    """`st-leap calibrate MODEL --max-quality-drop X` calibrates on STS-B dev through st_leap.calibrate, like any
    scored pairs: it ranks the points within the budget by layer reduction, prints its pick and reason, writes the
    report and saves the pick with its monitoring reference."""
    out, saved = tmp_path / "cal", tmp_path / "saved"
    code = main(["calibrate", eval_model_dir, "--max-quality-drop", "100", *FAST, "--out", str(out),
                 "--save-model", str(saved)])
    assert code == 0
    result = json.loads((out / "calibrate.json").read_text())
    assert result["data"]["source"] == "STS-B dev" and result["max_quality_drop"] == 100
    entry = result["roles"]["all"]
    assert entry["metric"] == "spearman" and entry["task"] is None
    # any drop is allowed: the static cut at layer 1 (4x on a 4-layer model) has the largest layer reduction
    assert entry["within_budget"][0] == "static L1"
    picked = entry["picked"]
    assert picked["label"] == "full" or picked["label"] in entry["timing"]["timed"]
    assert isinstance(picked["measured_speedup"], float)
    assert "picked for every role:" in capsys.readouterr().out
    assert (out / "calibrate.md").exists()
    reloaded = st_leap.load(str(saved))
    assert reloaded[0].truncate_layers == picked["truncate_layers"] and reloaded[0].exit_threshold == picked["theta"]
    assert (saved / "st_leap_monitor" / "all.json").exists()
    assert entry["reference"]["counts"] == picked["distribution"]  # the distinct STS-B dev sentences, at the pick


def test_cli_calibrate_thresholds_only(tiny_env, eval_model_dir, tmp_path, capsys):
    """--no-static compares exit thresholds only; the pick is saved as the default threshold, with what was
    measured on the model card."""
    out, saved = tmp_path / "cal", tmp_path / "saved"
    code = main(["calibrate", eval_model_dir, "--max-quality-drop", "100", *FAST, "--no-static", "--out", str(out),
                 "--save-model", str(saved)])
    assert code == 0
    result = json.loads((out / "calibrate.json").read_text())
    entry = result["roles"]["all"]
    assert result["static_depths"] == [] and {row["kind"] for row in entry["rows"]} == {"adaptive"}
    assert entry["within_budget"][0] == "theta=0.9"
    picked = entry["picked"]
    reloaded = st_leap.load(str(saved))
    assert reloaded[0].exit_threshold == picked["theta"] and reloaded[0].exit_min_layer == 2
    assert reloaded[0].truncate_layers is None
    card = (saved / "README.md").read_text()  # the model card carries what calibration measured
    assert "Measured by st_leap" in card and "calibrated operating point" in card
    assert f"{picked['quality']:.2f}" in card and "No exit rate" not in card


def test_cli_calibrate_saves_the_pick_for_one_role(tiny_env, eval_model_dir, tmp_path):
    """--role query saves the pick for encode_query only; documents and plain encode keep full depth."""
    out, saved = tmp_path / "cal", tmp_path / "saved"
    code = main(["calibrate", eval_model_dir, "--max-quality-drop", "100", *FAST, "--no-static", "--out", str(out),
                 "--save-model", str(saved), "--role", "query"])
    assert code == 0
    picked = json.loads((out / "calibrate.json").read_text())["roles"]["query"]["picked"]
    reloaded = st_leap.load(str(saved))
    assert saved_default(reloaded[0].exit_threshold, "query") == picked["theta"]
    assert saved_default(reloaded[0].exit_threshold, "document") is None
    assert saved_default(reloaded[0].exit_threshold, "default") is None
    assert all(saved_default(reloaded[0].exit_min_layer, role) == 2 for role in ("query", "document", "default"))
    assert sorted(p.name for p in (saved / "st_leap_monitor").iterdir()) == ["query.json", "query.npy"]


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
