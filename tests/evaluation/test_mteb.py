from __future__ import annotations

import csv
import json

import pytest

from st_leap.evaluation.beir import evaluate_beir
from st_leap.evaluation.early_exit import EarlyExitEmbeddingSimilarityEvaluator
from st_leap.evaluation.mteb import run_mteb, task_names


def test_task_names_maps_short_names():
    """Short CLI names map to mteb task names; mteb names pass through."""
    assert task_names("stsb,scifact, nfcorpus") == ["STSBenchmark", "SciFact", "NFCorpus"]
    assert task_names(["STS12"]) == ["STS12"]


def test_run_mteb_local_matches_st_and_beir_paths(eval_model, tiny_data_dir):
    """From local files, mteb's STS-B score equals the ST evaluator's and its NDCG@10 equals the beir path's."""
    summary = run_mteb(
        eval_model,
        ["stsb", "scifact"],
        exit_threshold=0.93,
        exit_min_layer=2,
        source="local",
        data_dir=tiny_data_dir,
        show_progress_bar=False,
    )
    assert summary["source"] == "local"
    with (tiny_data_dir / "stsb" / "test.tsv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    st = EarlyExitEmbeddingSimilarityEvaluator(
        [r["sentence1"] for r in rows],
        [r["sentence2"] for r in rows],
        [float(r["score"]) / 5 for r in rows],
        exit_threshold=0.93,
        exit_min_layer=2,
    )(eval_model)
    assert summary["tasks"]["STSBenchmark"]["main_score"] == pytest.approx(st["spearman_cosine"], abs=1e-6)
    assert summary["tasks"]["STSBenchmark"]["exit_stats"]["expected_layers"] == pytest.approx(st["expected_layers"])
    beir = evaluate_beir(
        eval_model, tiny_data_dir / "beir" / "scifact", exit_threshold=0.93, exit_min_layer=2, show_progress_bar=False
    )
    assert summary["tasks"]["SciFact"]["main_score"] == pytest.approx(beir["ndcg"]["NDCG@10"], abs=1e-4)


def test_run_mteb_writes_mteb_results_per_exit_setting(eval_model, tiny_data_dir, tmp_path):
    """Each exit setting gets its own mteb result folder (model_meta names it): no result is reused across thetas."""
    out = tmp_path / "results"
    kwargs = dict(
        source="local", data_dir=tiny_data_dir, output_folder=out, name="tiny/model", show_progress_bar=False
    )
    full = run_mteb(eval_model, ["stsb"], exit_threshold=None, **kwargs)
    early = run_mteb(eval_model, ["stsb"], exit_threshold=0.9, exit_min_layer=2, **kwargs)
    assert full["tasks"]["STSBenchmark"]["exit_stats"]["expected_layers"] == eval_model[0].num_layers
    assert early["tasks"]["STSBenchmark"]["exit_stats"]["expected_layers"] == pytest.approx(2.0)
    metas = sorted((out / "results" / "tiny__model").rglob("model_meta.json"))
    assert len(metas) == 2
    experiments = [json.loads(p.read_text())["experiment_kwargs"] for p in metas]
    assert {e["exit_threshold"] for e in experiments} == {"full", 0.9}
    task_files = sorted((out / "results" / "tiny__model").rglob("STSBenchmark.json"))
    assert len(task_files) == 2
    scores = json.loads(task_files[0].read_text())["scores"]["test"][0]
    assert "cosine_spearman" in scores and "st_leap_expected_layers" in scores


def test_run_mteb_uses_saved_default_threshold(eval_model, tiny_data_dir):
    """With no exit kwargs, mteb runs at the model's saved default threshold, and the metadata records it."""
    eval_model[0].exit_threshold = 0.9
    eval_model[0].exit_min_layer = 2
    summary = run_mteb(eval_model, ["stsb"], source="local", data_dir=tiny_data_dir, show_progress_bar=False)
    assert summary["exit_settings"]["exit_threshold"] == 0.9
    assert summary["model_meta"]["experiment_kwargs"]["exit_threshold"] == 0.9
    assert summary["tasks"]["STSBenchmark"]["exit_stats"]["expected_layers"] == pytest.approx(2.0)


def test_plain_mteb_evaluate_passes_exit_kwargs(eval_model, tiny_data_dir):
    """mteb.evaluate(st_leap_model, tasks, encode_kwargs={"exit_threshold": ...}) needs no wrapper: the kwargs reach
    the module, and the score equals our helper's at the same setting."""
    import mteb

    from st_leap.evaluation.mteb import load_local_task

    task = load_local_task(mteb.get_task("STSBenchmark"), tiny_data_dir)
    result = mteb.evaluate(
        eval_model,
        task,
        encode_kwargs={"exit_threshold": 0.9, "exit_min_layer": 2},
        cache=None,
        show_progress_bar=False,
    )
    assert eval_model[0].exit_stats.expected_layers == pytest.approx(2.0)  # the last encode call exited at layer 2
    ours = run_mteb(
        eval_model,
        ["stsb"],
        exit_threshold=0.9,
        exit_min_layer=2,
        source="local",
        data_dir=tiny_data_dir,
        show_progress_bar=False,
    )
    assert result.task_results[0].get_score() == pytest.approx(ours["tasks"]["STSBenchmark"]["main_score"])
