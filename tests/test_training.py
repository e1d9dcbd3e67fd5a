from __future__ import annotations

import json
from pathlib import Path

import pytest

from st_leap.training import TrainConfig, build_loss
from tests.conftest import VOCAB, build_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny 3-layer BERT saved as a plain Hugging Face folder (ST adds mean pooling)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_train"), num_layers=3)


def test_TrainConfig_reads_json_and_yaml_and_rejects_unknown_keys(tmp_path):
    """Config files are JSON or YAML; an unknown key or a bad value is a ValueError naming it."""
    (tmp_path / "c.json").write_text(json.dumps({"max_steps": 7, "loss": {"late_weight": 2.0}}))
    (tmp_path / "c.yaml").write_text("max_steps: 7\nloss:\n  late_weight: 2.0\n")
    assert TrainConfig.from_file(tmp_path / "c.json") == TrainConfig.from_file(tmp_path / "c.yaml")
    assert TrainConfig.from_file(tmp_path / "c.yaml").loss == {"late_weight": 2.0}
    (tmp_path / "bad.json").write_text(json.dumps({"max_step": 7}))
    with pytest.raises(ValueError, match=r"Unknown training config keys \['max_step'\]"):
        TrainConfig.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="teacher_mode must be 'live' or 'precomputed', got 'cached'"):
        TrainConfig(teacher_mode="cached")


def test_cli_train_saves_model_that_reloads_with_exit_defaults(tiny_dir, tmp_path, capsys):
    """`st-leap train --config FILE` trains (precomputed teacher, Trainer) and saves a model that st_leap.load
    reloads as an early-exit model with the config's exit defaults and the trained weights."""
    import st_leap.model
    from st_leap.cli import main

    config = {
        "model": tiny_dir,
        "teacher": tiny_dir,
        "teacher_mode": "precomputed",
        "output_dir": str(tmp_path / "out"),
        "max_steps": 3,
        "batch_size": 4,
        "warmup_steps": 1,
        "learning_rate": 1e-3,
        "max_seq_length": 16,
        "num_sentences": 12,
        "exit_threshold": 0.9,
        "exit_min_layer": 2,
        "logging_steps": 1,
    }
    (tmp_path / "train.json").write_text(json.dumps(config))
    from st_leap import resources

    original = resources.load_sentences
    resources.load_sentences = lambda n, seed=0: [" ".join(VOCAB[5 + i % 40 : 9 + i % 40]) for i in range(n)]
    try:
        assert main(["train", "--config", str(tmp_path / "train.json")]) == 0
    finally:
        resources.load_sentences = original
    out = capsys.readouterr().out  # the Trainer's log lines, then the summary JSON
    assert json.loads(out[out.rindex('{\n  "output_dir"') :])["output_dir"] == str(tmp_path / "out")
    model = st_leap.model.load(str(tmp_path / "out"))
    assert type(model[0]).__name__ == "EarlyExitTransformer"
    assert (model[0].exit_threshold, model[0].exit_min_layer) == (0.9, 2)
    before = st_leap.model.from_pretrained(tiny_dir)
    emb_after = model.encode(["a man is eating"], exit_threshold=None)
    emb_before = before.encode(["a man is eating"], exit_threshold=None)
    assert abs(emb_after - emb_before).max() > 1e-4  # trained weights were saved
    assert (tmp_path / "out" / "teacher_cache" / "meta.json").exists()


def test_measure_replay_matches_encode(tiny_dir, tmp_path, monkeypatch):
    """measure(method="replay") (one full-depth pass, the exit rule replayed) reports the same exits, E[layers],
    exit-layer counts and STS-B figures as measure(method="encode") (one early-exit encode per threshold)."""
    import random

    import st_leap.model
    from st_leap.evaluation.sweep import measure

    rng = random.Random(0)
    words = VOCAB[5:]
    rows = ["sentence1\tsentence2\tscore"]
    for _ in range(60):
        a = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
        b = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
        rows.append(f"{a}\t{b}\t{rng.uniform(0, 5):.2f}")
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    monkeypatch.setenv("ST_LEAP_DATA", str(tmp_path))

    model = st_leap.model.from_pretrained(tiny_dir)
    thresholds = (0.1, 0.3, 0.5, 0.7, 0.9)
    encoded = measure(model, thresholds=thresholds, min_layer=2, per_layer_stsb=True)
    replayed = measure(model, thresholds=thresholds, min_layer=2, per_layer_stsb=True, method="replay")
    rates = [encoded["exits"][str(t)]["exit_rate"] for t in thresholds]
    assert any(0 < r < 1 for r in rates), rates  # some threshold splits the sentences: the test is not vacuous
    for theta in thresholds:
        e, r = encoded["exits"][str(theta)], replayed["exits"][str(theta)]
        assert e["counts"] == r["counts"]
        assert e["expected_layers"] == pytest.approx(r["expected_layers"])
        assert e["stsb_exited"] == pytest.approx(r["stsb_exited"], abs=1e-4)
    assert encoded["stsb_full"] == pytest.approx(replayed["stsb_full"], abs=1e-4)
    assert encoded["stsb_per_layer"] == pytest.approx(replayed["stsb_per_layer"], abs=1e-4)
    assert encoded["to_final"] == pytest.approx(replayed["to_final"], abs=1e-5)
    with pytest.raises(ValueError, match="method must be 'encode' or 'replay'"):
        measure(model, method="fast")


RECIPE_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "train_recipe"


@pytest.fixture(scope="module")
def six_layer_student(tmp_path_factory):
    from st_leap.model import from_pretrained

    return from_pretrained(build_tiny_model_dir(tmp_path_factory.mktemp("six"), num_layers=6))


@pytest.mark.parametrize("path", sorted((RECIPE_DIR / "experiments").glob("*.json")), ids=lambda p: p.stem)
def test_committed_recipe_experiments_build_their_loss(path, six_layer_student):
    """Every committed recipe experiment, over defaults.json, parses and builds its LEAPLoss (catches schema drift)."""
    from benchmarks.train_recipe.run import experiment_config

    config = experiment_config(path.stem)
    loss = build_loss(six_layer_student, config, teacher=None)
    settings = loss.get_config_dict()
    for key, value in config.loss.items():
        assert settings[key] == (list(value) if isinstance(value, tuple) else value), key


def test_ablation_experiments_are_their_recipe_without_the_exit_term(six_layer_student):
    """The Table 11 ablations of the recipe change nothing but the exit weight (and where they write)."""
    from benchmarks.train_recipe.run import experiment_config

    for recipe, ablation in [("stage1", "no_exit"), ("2h", "2h_no_exit")]:
        a = experiment_config(recipe).to_dict()
        b = experiment_config(ablation).to_dict()
        assert b["loss"].pop("exit_weight") == 0.0
        assert {k for k in a if a[k] != b[k]} == {"output_dir"}
        terms = build_loss(six_layer_student, experiment_config(ablation), teacher=None)
        assert terms.exit_weight == 0.0 and terms.anchor_weight > 0 and terms.adjacent_weight > 0


PAPER_TABLES_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_tables"


@pytest.mark.parametrize("path", sorted((PAPER_TABLES_DIR / "experiments").glob("*.json")), ids=lambda p: p.stem)
def test_paper_table_experiments_build_their_loss(path, six_layer_student):
    """Every Table 11/12 experiment is defaults.json plus its own keys, and builds its LEAPLoss; the Table 11 rows
    of one loss share every setting but the loss."""
    from benchmarks.paper_tables import run

    labels, data = run.experiment_config(path.stem)
    assert labels["table"] in ("11", "11-ours", "11-change", "12")
    config = TrainConfig.from_dict(data)
    loss = build_loss(six_layer_student, config, teacher=None)
    assert loss.preset == ("recipe" if "ours" in path.stem else "paper")
    defaults = json.loads((PAPER_TABLES_DIR / "defaults.json").read_text())
    if labels["table"] in ("11", "11-ours"):
        assert {k for k in defaults if data[k] != defaults[k]} == set()


def test_version_1_loss_keys_are_migrated(tmp_path, six_layer_student):
    """A config written before the paper's names (loss_version 1) loads with its old meaning: late -> anchor,
    redundancy -> adjacent, the old defaults final 1 / adjacent 1, warm-up steps -> a ramp fraction."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"max_steps": 100, "loss_version": 1,
                                "loss": {"late_weight": 3.0, "student_weight_warmup_steps": 25}}))
    config = TrainConfig.from_file(path)
    assert config.loss == {"anchor_weight": 3.0, "student_weight_ramp": [0.0, 0.25], "final_weight": 1.0,
                           "adjacent_weight": 1.0}
    loss = build_loss(six_layer_student, config, teacher=None)
    assert loss.settings.late_weight == 0.0 and loss.settings.anchor_weight == 3.0
    with pytest.raises(ValueError, match="was not the paper's loss"):
        TrainConfig.from_dict({"loss_version": 1, "loss": {"preset": "paper"}})


def test_train_with_fit_and_precomputed_teacher(tiny_dir, tmp_path, monkeypatch):
    """api='fit' trains from the cached teacher embeddings as labels (the classic path) and saves the model."""
    from st_leap import resources
    from st_leap.training import train

    monkeypatch.setattr(resources, "load_sentences", lambda n, seed=0: [" ".join(VOCAB[5 : 6 + i % 7]) for i in range(n)])
    result = train(TrainConfig(model=tiny_dir, teacher=tiny_dir, api="fit", output_dir=str(tmp_path / "o"), max_steps=2,
                               batch_size=4, num_sentences=8, max_seq_length=16, warmup_steps=1))
    assert result.steps == 2 and result.teacher_seconds > 0
    assert (tmp_path / "o" / "modules.json").exists() and (tmp_path / "o" / "teacher_cache" / "meta.json").exists()
