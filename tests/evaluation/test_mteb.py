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
    assert json.loads(task_files[0].read_text())["dataset_revision"].startswith("local:")  # not a Hub revision
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


def test_run_mteb_and_beir_follow_per_role_exit_settings(eval_model, tiny_data_dir, tmp_path):
    """A model saved with exit_threshold per role: mteb's retrieval queries exit (encode_query), its documents and
    STS-B (plain encode) run full depth, with no extra argument; the beir path agrees, and mteb's experiment name
    holds each role's setting (issue 13)."""
    eval_model[0].set_exit_defaults({"query": 0.9, "document": None, "default": None}, 1, 2, None)
    summary = run_mteb(
        eval_model, ["stsb", "scifact"], source="local", data_dir=tiny_data_dir, show_progress_bar=False,
        output_folder=tmp_path / "results", name="tiny/roles",
    )
    depth = eval_model[0].num_layers
    by_role = summary["tasks"]["SciFact"]["exit_stats_by_role"]
    assert by_role["query"]["expected_layers"] == pytest.approx(2.0)
    assert by_role["document"]["expected_layers"] == depth
    assert summary["tasks"]["STSBenchmark"]["exit_stats_by_role"]["default"]["expected_layers"] == depth
    experiment = summary["model_meta"]["experiment_kwargs"]
    assert experiment["exit_threshold_query"] == 0.9 and experiment["exit_threshold_document"] == "full"
    beir = evaluate_beir(eval_model, tiny_data_dir / "beir" / "scifact", show_progress_bar=False)
    assert beir["exit_stats"]["queries"]["expected_layers"] == pytest.approx(2.0)
    assert beir["exit_stats"]["corpus"]["expected_layers"] == depth
    assert summary["tasks"]["SciFact"]["main_score"] == pytest.approx(beir["ndcg"]["NDCG@10"], abs=1e-4)


def test_plain_mteb_evaluate_with_its_result_cache_never_serves_another_setting(
    eval_model_dir, tiny_data_dir, tmp_path
):
    """The failing sequence of issue 16: a full-depth run, then theta 0.5, with mteb's result cache on. Through
    st_leap's ModelMeta the second run computes its own score (the settings are experiment_kwargs), under a name
    that is not the base model's and a revision that hashes the folder."""
    import mteb

    from st_leap.evaluation.mteb import load_local_task, model_meta

    cache = mteb.ResultCache(cache_path=tmp_path / "mteb_cache")
    meta = model_meta(eval_model_dir)
    assert meta.name.startswith("st_leap/") and meta.revision.startswith("local-")

    def run(**settings):
        task = load_local_task(mteb.get_task("STSBenchmark"), tiny_data_dir)
        model = meta.load_model(**settings)
        result = mteb.evaluate(model, task, cache=cache, show_progress_bar=False)
        return result.task_results[0].get_score(), model

    full, full_model = run()
    early, early_model = run(exit_threshold=0.5, exit_min_layer=2)
    assert early_model.model[0].exit_stats.num_samples > 0, "the model must run, not be served from the cache"
    assert early_model.model[0].exit_stats.expected_layers < early_model.model[0].num_layers
    assert early != full
    again, again_model = run(exit_threshold=0.5, exit_min_layer=2)  # the same setting is served from the cache
    assert again == pytest.approx(early, abs=1e-5) and again_model.model[0].exit_stats.num_samples == 0
    folders = {p.parent.name for p in (tmp_path / "mteb_cache").rglob("STSBenchmark.json")}
    assert len(folders) == 2, folders
