from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from st_leap.training import TrainConfig, build_loss, training_arguments
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


def test_training_arguments_follow_the_config_and_overrides(tmp_path):
    """One config -> Trainer arguments mapping: LEAP runs and the baselines trained beside them get the same
    optimiser, schedule, sampler and checkpointing; an override replaces exactly one of them."""
    from sentence_transformers.base.sampler import BatchSamplers

    from st_leap.sampler import LengthGroupedBatchSampler

    config = TrainConfig(max_steps=12, batch_size=4, learning_rate=1e-3, warmup_steps=2, save_steps=5, seed=7)
    args = training_arguments(config, tmp_path / "ckpt")
    assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate) == (12, 4, 1e-3)
    assert (args.warmup_steps, args.seed, args.output_dir) == (2, 7, str(tmp_path / "ckpt"))
    assert args.save_strategy == "steps" and args.save_steps == 5
    assert args.batch_sampler is (LengthGroupedBatchSampler if config.group_by_length else BatchSamplers.BATCH_SAMPLER)
    plain = training_arguments(TrainConfig(group_by_length=False), tmp_path, save_strategy="no", max_steps=3)
    assert plain.save_strategy == "no" and plain.max_steps == 3 and plain.batch_sampler == BatchSamplers.BATCH_SAMPLER


def test_cli_train_saves_model_that_reloads_with_exit_defaults(tiny_dir, tmp_path, capsys, monkeypatch):
    """`st-leap train --config FILE` trains (precomputed teacher, Trainer) and saves a model that st_leap.load
    reloads as an early-exit model with the config's exit defaults and the trained weights; the teacher cache goes
    to the shared cache ($ST_LEAP_CACHE/teacher/<key>), not into the model folder."""
    import st_leap.model
    from st_leap.cli import main

    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "cache"))

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
    assert not (tmp_path / "out" / "teacher_cache").exists()
    assert len(list((tmp_path / "cache" / "teacher").glob("*/meta.json"))) == 1


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
        # no_exit's recorded run stopped at step 1972 of its 2000-step schedule: its config says so (stop_at_step).
        assert {k for k in a if a[k] != b[k]} <= {"output_dir", "stop_at_step"}
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
    """api='fit' trains from the cached teacher embeddings as labels (the classic path) and saves the model; fit's
    own Trainer writes the checkpoints (save_steps) under output_dir/checkpoints. A named cache_dir is where the
    teacher cache goes (not the shared cache)."""
    from st_leap import resources
    from st_leap.training import train

    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "shared"))
    monkeypatch.setattr(resources, "load_sentences", lambda n, seed=0: [" ".join(VOCAB[5 : 6 + i % 7]) for i in range(n)])
    result = train(TrainConfig(model=tiny_dir, teacher=tiny_dir, api="fit", output_dir=str(tmp_path / "o"), max_steps=2,
                               batch_size=4, num_sentences=8, max_seq_length=16, warmup_steps=1,
                               cache_dir=str(tmp_path / "named_cache")))
    assert result.steps == 2 and result.teacher_seconds > 0
    assert result.teacher_cache == str(tmp_path / "named_cache") and result.teacher_cache_reused is False
    assert (tmp_path / "o" / "modules.json").exists() and (tmp_path / "named_cache" / "meta.json").exists()
    assert not (tmp_path / "o" / "teacher_cache").exists() and not (tmp_path / "shared" / "teacher").exists()
    assert (tmp_path / "o" / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()


def test_eval_steps_log_the_dev_signals(tiny_dir, tmp_path, monkeypatch):
    """With eval_steps the Trainer logs the cloze retrieval dev split (NDCG@10, exit rate) and the agreement with
    the teacher for queries and documents, at the config's exit settings; the evaluation runs at the serving
    length and leaves training's max_seq_length as it was."""
    import gzip

    from st_leap import resources
    from st_leap.training import train

    data = tmp_path / "data"
    (data / "nli").mkdir(parents=True)
    (data / "stsb").mkdir()
    with gzip.open(data / "nli" / "more_sentences.txt.gz", "wt", encoding="utf-8") as f:
        f.write("".join(" ".join(VOCAB[5 + i % 9 : 8 + i % 13]) + "\n" for i in range(60)))
    monkeypatch.setenv("ST_LEAP_DATA", str(data))
    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(resources, "PASSAGE_SOURCES", {"a": (1, 60)})
    monkeypatch.setattr(resources, "load_sentences", lambda n, seed=0: [" ".join(VOCAB[5 : 6 + i % 7]) for i in range(n)])
    config = TrainConfig(model=tiny_dir, teacher=tiny_dir, output_dir=str(tmp_path / "o"), max_steps=4, batch_size=4,
                         max_seq_length=8, warmup_steps=1, logging_steps=2, save_steps=None, eval_steps=2,
                         dev_queries=3, dev_documents=6, sentences_per_passage=4, exit_threshold=0.5, exit_min_layer=2)
    with pytest.raises(ValueError, match="eval_steps needs an evaluator"):
        train(config)  # training takes its evaluator; the config layer builds it
    from st_leap.evaluation.dev import dev_evaluator

    result = train(config, evaluator=dev_evaluator(config))
    evals = [entry for entry in result.log_history if "eval_cloze-dev_cosine_ndcg@10" in entry]
    assert [entry["step"] for entry in evals] == [2, 4]
    for entry in evals:
        assert 0 <= entry["eval_cloze-dev_cosine_ndcg@10"] <= 1 and 0 <= entry["eval_cloze-dev_exit_rate"] <= 1
        assert -1 <= entry["eval_agreement-queries_cosine_mean"] <= 1 + 1e-6
        assert 2 <= entry["eval_agreement-documents_expected_layers"] <= 3
    with pytest.raises(ValueError, match="eval_steps needs api='trainer'"):
        TrainConfig(api="fit", eval_steps=2)
    with pytest.raises(ValueError, match="dev_queries"):
        TrainConfig(dev_queries=5, dev_documents=4)


def test_teacher_cache_is_shared_outside_the_model_folder(tiny_dir, tmp_path, monkeypatch):
    """With no cache_dir, the precomputed teacher cache goes to the shared, content-keyed cache
    ($ST_LEAP_CACHE/teacher/<key>/), never into the saved model folder: no teacher_cache/ and no .npy file there
    (outside checkpoints/). A second identical run, into another folder, reuses that cache without running the
    teacher; a run on other texts gets a folder of its own (no mismatch error). leap_training.json records both."""
    from st_leap import teacher as teacher_module
    from st_leap.training import train

    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "cache"))
    sentences = [" ".join(VOCAB[5 + i % 30 : 8 + i % 30]) for i in range(8)]
    config = dict(model=tiny_dir, teacher=tiny_dir, max_steps=2, batch_size=4, max_seq_length=16, warmup_steps=1,
                  save_steps=2, loss={"intermediate_weight": 0.5})  # per-layer teacher rows: a 3-D array
    first = train(TrainConfig(output_dir=str(tmp_path / "a"), **config), sentences)
    folder = Path(first.teacher_cache)
    assert first.teacher_cache_reused is False and folder.parent == tmp_path / "cache" / "teacher"
    assert (folder / "embeddings.npy").exists() and (folder / "meta.json").exists()
    out = tmp_path / "a"
    assert (out / "modules.json").exists() and (out / "checkpoints" / "checkpoint-2").is_dir()
    assert not (out / "teacher_cache").exists()
    stray = [p for p in out.rglob("*.npy") if "checkpoints" not in p.relative_to(out).parts]
    assert stray == []
    saved = json.loads((out / "leap_training.json").read_text())
    assert (saved["teacher_cache"], saved["teacher_cache_reused"]) == (str(folder), False)

    def never(*args, **kwargs):
        raise AssertionError("the teacher was run although the shared cache holds its embeddings")

    with monkeypatch.context() as patch:
        patch.setattr(teacher_module, "tqdm", never)  # the teacher's encoding loop, skipped when the cache is reused
        second = train(TrainConfig(output_dir=str(tmp_path / "b"), **config), sentences)
    assert (second.teacher_cache, second.teacher_cache_reused) == (str(folder), True)
    assert not (tmp_path / "b" / "teacher_cache").exists()

    other = train(TrainConfig(output_dir=str(tmp_path / "c"), **{**config, "save_steps": None}), sentences[::-1])
    assert other.teacher_cache_reused is False and Path(other.teacher_cache) != folder
    assert len(list((tmp_path / "cache" / "teacher").iterdir())) == 2


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and resume (issue 17)

RESUME_SENTENCES = [" ".join(VOCAB[5 + (3 * i) % 40 : 7 + (3 * i) % 40 + i % 6]) for i in range(14)]  # 3 batches of 4


@pytest.fixture(scope="module")
def wide_teacher_dir(tmp_path_factory):
    """A tiny 3-layer BERT 48 wide: a teacher wider than the student, so the loss owns a learned projection."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("wide"), num_layers=3, hidden=48, seed=1)


@pytest.fixture()
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float results in this process and in the killed subprocess
    yield
    torch.set_num_threads(threads)


def _resume_config(student: str, teacher: str, output_dir, **overrides) -> dict:
    config = {
        "model": student, "teacher": teacher, "teacher_mode": "precomputed", "output_dir": str(output_dir),
        "max_steps": 8, "batch_size": 4, "warmup_steps": 2, "learning_rate": 1e-3, "max_seq_length": 16,
        "logging_steps": 1, "save_steps": 2, "save_total_limit": 2,
        # The student weight ramps over all of training: a step counter restarted at 0 changes every later step.
        "loss": {"student_weight_ramp": [0.0, 1.0]},
    }
    return {**config, **overrides}


def test_train_writes_checkpoints_and_keeps_the_last_k(tiny_dir, wide_teacher_dir, tmp_path, one_thread):
    """save_steps=2 over 6 steps writes Trainer checkpoints (model, optimizer, scheduler, RNG, trainer state, the
    loss's projection, the config) under output_dir/checkpoints and keeps save_total_limit=2 of them; the saved
    model's own folder holds only the model (plus the checkpoints/ subfolder; the teacher cache is elsewhere).
    save_minutes alone checkpoints by wall time."""
    import torch

    from st_leap.training import TrainConfig, train

    out = tmp_path / "out"
    result = train(TrainConfig(**_resume_config(tiny_dir, wide_teacher_dir, out, max_steps=6)), RESUME_SENTENCES)
    assert result.steps == 6 and result.loss_step == 6 and result.resumed_from is None
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "modules.json",
                 "leap_loss.pt", "leap_config.json"):
        assert (checkpoints / "checkpoint-6" / name).exists(), name
    assert json.loads((checkpoints / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    assert (out / "modules.json").exists() and (out / "leap_training.json").exists()
    assert not list(out.glob("checkpoint-*"))  # nothing of the Trainer's in the model folder itself
    assert "checkpoints" in {p.name for p in out.iterdir() if p.is_dir()}
    assert not (out / "teacher_cache").exists()
    # Resuming a finished run trains nothing more (the Trainer alone would run a 7th step from checkpoint-6).
    again = train(TrainConfig(**_resume_config(tiny_dir, wide_teacher_dir, out, max_steps=6, resume=True)),
                  RESUME_SENTENCES)
    assert (again.steps, again.loss_step, again.resumed_from) == (6, 6, str(checkpoints / "checkpoint-6"))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    a, b = result.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Time-based only: a tiny save_minutes saves after every step; the last 2 are kept.
    out2 = tmp_path / "minutes"
    train(TrainConfig(**_resume_config(tiny_dir, wide_teacher_dir, out2, max_steps=3, save_steps=None,
                                       save_minutes=1e-9)), RESUME_SENTENCES)
    assert sorted(p.name for p in (out2 / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]

    # A run stopped by its time budget checkpoints where it stopped, so it can be resumed.
    out3 = tmp_path / "budget"
    with pytest.warns(UserWarning, match="set stop_at_step: 1 instead"):
        stopped = train(TrainConfig(**_resume_config(tiny_dir, wide_teacher_dir, out3, max_train_seconds=1e-9)),
                        RESUME_SENTENCES)
    assert stopped.steps == 1
    assert sorted(p.name for p in (out3 / "checkpoints").iterdir()) == ["checkpoint-1"]
    assert json.loads((out3 / "leap_training.json").read_text())["steps"] == 1

    # A step budget: stop_at_step=3 of a schedule over 8 steps stops at 3, with the schedule of the 8-step run.
    out4 = tmp_path / "stop_at"
    early = train(TrainConfig(**_resume_config(tiny_dir, wide_teacher_dir, out4, stop_at_step=3)), RESUME_SENTENCES)
    assert early.steps == 3 and early.loss_step == 3
    state = json.loads((out4 / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["max_steps"] == 8
    with pytest.raises(ValueError, match="stop_at_step must be"):
        TrainConfig(**_resume_config(tiny_dir, wide_teacher_dir, out4, stop_at_step=9))


def test_no_committed_config_stops_on_wall_clock_time():
    """Recipes are step budgets: no committed training config carries a wall-clock cap."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    configs = [p for p in root.rglob("*.json") if "results" not in p.parts]
    assert configs
    capped = [str(p) for p in configs if json.loads(p.read_text()).get("max_train_seconds") is not None]
    assert capped == []


KILLED_RUN = """
import json, os, sys
import torch
torch.set_num_threads(1)
from transformers import TrainerCallback
from st_leap.training import TrainConfig, train

class KillAfterStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[3]):
            os._exit(3)  # no clean-up, no final save: as if the machine went away

train(TrainConfig(**json.loads(sys.argv[1])), json.loads(sys.argv[2]), callbacks=[KillAfterStep()])
"""


@pytest.mark.parametrize("group_by_length", [False, True], ids=["random_batches", "length_grouped"])
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tiny_dir, wide_teacher_dir, tmp_path, one_thread, group_by_length
):
    """A run killed (os._exit) after step 5 of 8, with checkpoints every 2 steps, resumed with resume=True from
    checkpoint-4, ends with the weights of the uninterrupted 8-step run: the same data order (3 batches per epoch,
    so the resume skips one batch of epoch 2 and reshuffles epoch 3), learning-rate schedule, dropout RNG, loss
    projection and LEAPLoss step counter (its student-weight ramp spans all 8 steps)."""
    import os
    import subprocess
    import sys

    from st_leap.training import TrainConfig, load_student, train

    extra = {"group_by_length": group_by_length}
    killed_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    config = _resume_config(tiny_dir, wide_teacher_dir, killed_dir, **extra)
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, json.dumps(config), json.dumps(RESUME_SENTENCES), "5"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert sorted(p.name for p in (killed_dir / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert not (killed_dir / "modules.json").exists()  # it never finished

    resumed = train(TrainConfig(**{**config, "resume": True}), RESUME_SENTENCES)
    full_config = _resume_config(tiny_dir, wide_teacher_dir, tmp_path / "full", **extra)
    full = train(TrainConfig(**full_config), RESUME_SENTENCES)

    assert resumed.resumed_from == str(killed_dir / "checkpoints" / "checkpoint-4")
    assert resumed.steps == full.steps == 8
    assert resumed.loss_step == full.loss_step == 8
    a, b = resumed.model.state_dict(), full.model.state_dict()
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-5, worst
    start = load_student(tiny_dir).state_dict()  # training moved the weights: equal weights are not vacuous
    assert max((start[k].float() - b[k].float()).abs().max().item() for k in b) > 1e-3
    # The resumed run's log continues the killed run's: steps 5-8 logged by the resumed process.
    losses_full = {e["step"]: e["loss"] for e in full.log_history if "loss" in e}
    losses_resumed = {e["step"]: e["loss"] for e in resumed.log_history if "loss" in e}
    for step in (5, 6, 7, 8):
        assert losses_resumed[step] == pytest.approx(losses_full[step], abs=1e-5), step


def test_resume_settings_are_checked(tmp_path, tiny_dir):
    """resume is refused on the fit path and for a folder that is not a complete checkpoint; resume=True with no
    checkpoint yet trains from step 0 (warning). Bad checkpoint settings are ValueErrors naming the key."""
    from st_leap.training import TrainConfig, latest_checkpoint, resume_checkpoint, warn_config_changes

    with pytest.raises(ValueError, match="resume needs api='trainer'"):
        TrainConfig(api="fit", resume=True)
    with pytest.raises(ValueError, match="save_steps must be null or an int >= 1"):
        TrainConfig(save_steps=0)
    with pytest.raises(ValueError, match="save_minutes must be null or a number > 0"):
        TrainConfig(save_minutes=0)
    with pytest.raises(ValueError, match="save_total_limit must be null or an int >= 1"):
        TrainConfig(save_total_limit=0)
    with pytest.raises(ValueError, match="not a complete Trainer checkpoint"):
        resume_checkpoint(TrainConfig(output_dir=str(tmp_path), resume=str(tmp_path / "nope")))
    assert resume_checkpoint(TrainConfig(output_dir=str(tmp_path), resume=True)) is None
    # The newest checkpoint was killed while saving (no trainer_state.json): the one before it is used.
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert latest_checkpoint(tmp_path / "checkpoints") == str(tmp_path / "checkpoints" / "checkpoint-4")
    assert resume_checkpoint(TrainConfig(output_dir=str(tmp_path), resume=True)).endswith("checkpoint-4")
    # A resumed config that changes what is computed is warned about (output_dir, resume, save_* are free).
    saved = TrainConfig(output_dir="elsewhere", max_steps=8).to_dict()
    (tmp_path / "checkpoints" / "checkpoint-4" / "leap_config.json").write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match=r"differs in \['learning_rate'\]"):
        warn_config_changes(TrainConfig(output_dir=str(tmp_path), max_steps=8, learning_rate=5e-4, resume=True,
                                        save_steps=7), tmp_path / "checkpoints" / "checkpoint-4")
    # A run stopped with stop_at_step and resumed without it (the documented way to continue) is not warned about:
    # where a run stops does not change what its steps compute.
    stopped = TrainConfig(output_dir="elsewhere", max_steps=8, stop_at_step=4).to_dict()
    (tmp_path / "checkpoints" / "checkpoint-4" / "leap_config.json").write_text(json.dumps(stopped))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_config_changes(TrainConfig(output_dir=str(tmp_path), max_steps=8, resume=True),
                            tmp_path / "checkpoints" / "checkpoint-4")


def test_cli_train_resume_and_save_steps_flags(tmp_path, monkeypatch):
    """`st-leap train --resume [CHECKPOINT] --save-steps N --save-minutes M` override the config file's keys."""
    from st_leap import training
    from st_leap.cli import main

    seen = {}

    def fake_train(config, evaluator=None):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(training, "train", fake_train)
    (tmp_path / "c.json").write_text(json.dumps({"max_steps": 7}))
    for argv, expected in [
        ([], {"resume": False, "save_steps": 500, "save_minutes": None}),
        (["--resume", "--save-steps", "50", "--save-minutes", "30"],
         {"resume": True, "save_steps": 50, "save_minutes": 30.0}),
        (["--resume", "ckpt/checkpoint-4", "--save-steps", "0"], {"resume": "ckpt/checkpoint-4", "save_steps": None}),
    ]:
        with pytest.raises(SystemExit):
            main(["train", "--config", str(tmp_path / "c.json"), *argv])
        for key, value in expected.items():
            assert getattr(seen["config"], key) == value, (argv, key)


def test_retrieval_trains_a_second_dataset_of_sentences_and_their_passages(tiny_dir, tmp_path, monkeypatch):
    """A config's ``retrieval`` key adds sentence-to-passage pairs (never the dev passages) labelled with the
    teacher's passage embeddings at the teacher's own length, and QueryRetrievalLoss beside LEAPLoss in one
    Trainer; both losses run."""
    import gzip

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from st_leap import resources, training
    from st_leap.losses import QueryRetrievalLoss

    data = tmp_path / "data"
    (data / "nli").mkdir(parents=True)
    (data / "stsb").mkdir()
    with gzip.open(data / "nli" / "more_sentences.txt.gz", "wt", encoding="utf-8") as f:
        lines = [" ".join(VOCAB[5 + i % 9 : 8 + i % 13]) + f" {VOCAB[5 + i % 40]} {VOCAB[5 + i // 40]}" for i in range(60)]
        f.write("".join(line + "\n" for line in lines))
    monkeypatch.setenv("ST_LEAP_DATA", str(data))
    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(resources, "PASSAGE_SOURCES", {"a": (1, 60)})
    monkeypatch.setattr(resources, "load_sentences", lambda n, seed=0: [" ".join(VOCAB[5 : 6 + i % 7]) for i in range(n)])
    calls = {"n": 0}

    class Counting(QueryRetrievalLoss):
        def forward(self, *args, **kwargs):
            calls["n"] += 1
            return super().forward(*args, **kwargs)

    monkeypatch.setattr(training, "QueryRetrievalLoss", Counting)
    config = TrainConfig(model=tiny_dir, teacher=tiny_dir, output_dir=str(tmp_path / "o"), max_steps=6, batch_size=4,
                         num_sentences=16, max_seq_length=8, warmup_steps=1, save_steps=None, dev_queries=3, dev_documents=6,
                         sentences_per_passage=4, group_by_length=True,
                         retrieval={"passages": 5, "layers": [2, 3], "scale": 10.0})
    teacher = SentenceTransformer(tiny_dir, device="cpu")
    teacher.max_seq_length = 8
    dataset = training.retrieval_dataset(config, teacher, document_length=32)
    assert teacher.max_seq_length == 8  # restored
    queries, passages, owners = resources.query_passage_pairs(5, held_out_documents=6, sentences_per_passage=4)
    assert len(dataset) == len(queries) == 20 and sorted(dataset["sentence"]) == sorted(queries)
    dev = {s for run in resources.passage_runs(sentences_per_passage=4)[-6:] for s in run}
    assert not dev & set(dataset["sentence"])
    teacher.max_seq_length = 32
    expected = teacher.encode(passages)
    for sentence, label in zip(dataset["sentence"][:5], dataset["label"][:5]):
        passage = owners[queries.index(sentence)]
        assert sentence in passages[passage]
        np.testing.assert_allclose(label, expected[passage], atol=1e-5)

    result = training.train(config)
    assert result.steps == 6 and calls["n"] >= 1
    with pytest.raises(ValueError, match="retrieval needs a teacher"):
        TrainConfig(teacher=None, retrieval={"passages": 5})
    with pytest.raises(ValueError, match="retrieval must be"):
        TrainConfig(retrieval={"layers": [2]})
    with pytest.raises(ValueError, match="num_passages"):
        resources.query_passage_pairs(10, held_out_documents=6, sentences_per_passage=4)


def test_corpus_config_trains_on_the_corpus_and_pairs_texts_with_their_documents(tiny_dir, tmp_path):
    """A config's ``corpus`` key: training texts are query-like texts of the training documents only (the dev
    documents held out), and the retrieval dataset labels each with the teacher's embedding of its own document."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from st_leap import training
    from st_leap.corpus import read_corpus, split_documents
    from tests.test_query_encoder import tiny_corpus

    path = tiny_corpus(tmp_path / "corpus.jsonl", n=20)
    config = TrainConfig(model=tiny_dir, teacher=tiny_dir, max_steps=2, batch_size=4, num_sentences=40,
                         corpus={"path": str(path), "dev_documents": 5}, retrieval={"layers": [2]},
                         output_dir=str(tmp_path / "run"), save=False, save_steps=None)
    texts, owners, corpus = training.corpus_training_texts(config)
    _, dev = split_documents(corpus, 5, seed=config.sentence_seed)
    assert len(texts) == 40 and not set(owners) & set(dev)
    assert training.training_texts(config) == texts
    teacher = SentenceTransformer(tiny_dir, device="cpu")
    dataset = training.retrieval_dataset(config, teacher, document_length=64)
    expected = teacher.encode(corpus.documents)
    for sentence, label in zip(dataset["sentence"][:5], dataset["label"][:5]):
        owner = owners[texts.index(sentence)]
        assert sentence in corpus.documents[owner]
        np.testing.assert_allclose(label, expected[owner], atol=1e-5)
    assert training.train(config).steps == 2
    assert read_corpus(path).ids == corpus.ids


def test_corpus_config_errors(tmp_path):
    with pytest.raises(ValueError, match="corpus must be"):
        TrainConfig(corpus={"dev_documents": 5})
    with pytest.raises(ValueError, match="corpus must be"):
        TrainConfig(corpus={"path": "x", "questions": "y"})
    with pytest.raises(ValueError, match="corpus needs a teacher"):
        TrainConfig(teacher=None, corpus={"path": "x"})
    TrainConfig(corpus={"path": "x"}, retrieval={"layers": [2]})  # no 'passages' needed with a corpus
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": 1, "text": "ok"}\n{"text": "no id"}\n', encoding="utf-8")
    from st_leap.training import train

    with pytest.raises(ValueError, match="line 2: missing _id"):
        train(TrainConfig(model=str(tmp_path / "no-model"), corpus={"path": str(bad)}))


def _circle(n: int, step: float = 0.1):
    """``n`` unit vectors at angles 0, step, 2 step, ...: document i's neighbours rank by angular distance."""
    import numpy as np

    angles = step * np.arange(n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def test_mine_hard_negatives_skip_the_own_document_and_draw_from_the_window():
    """Negatives are never the own document, are distinct, and come from ranks ``skip + 1 .. skip + pool`` of the
    own document's neighbours (brute force over every row); the draw is seeded."""
    import numpy as np

    from st_leap.training import mine_hard_negatives

    rng = np.random.default_rng(0)
    documents = rng.normal(size=(50, 16)).astype(np.float32)
    owners = rng.integers(0, 50, size=200)
    negatives = mine_hard_negatives(documents, owners, 3, skip=4, pool=6, seed=1, chunk_size=7)
    assert negatives.shape == (200, 3)
    normed = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    for own, row in zip(owners, negatives):
        ranked = [int(i) for i in np.argsort(-(normed @ normed[own])) if i != own]
        assert own not in row and len(set(row.tolist())) == 3
        assert set(row.tolist()) <= set(ranked[4:10])
    np.testing.assert_array_equal(negatives, mine_hard_negatives(documents, owners, 3, skip=4, pool=6, seed=1))
    assert not np.array_equal(negatives, mine_hard_negatives(documents, owners, 3, skip=4, pool=6, seed=2))
    # on a circle the window is exact: document 0's neighbours are 1, 2, 3, ...
    assert set(mine_hard_negatives(_circle(30), [0], 4, skip=2, pool=4)[0].tolist()) == {3, 4, 5, 6}
    # only the candidates (a corpus run's training documents) can be negatives
    held_out = {3, 4, 5}
    kept = [i for i in range(30) if i not in held_out]
    assert set(mine_hard_negatives(_circle(30), [0], 4, skip=2, pool=4, candidates=kept)[0].tolist()) == {6, 7, 8, 9}
    with pytest.raises(ValueError, match="too few"):
        mine_hard_negatives(_circle(5), [0], 3, skip=2, pool=3)
    with pytest.raises(ValueError, match="pool >= k"):
        mine_hard_negatives(_circle(30), [0], 3, pool=2)


def test_mine_hard_negatives_from_the_query_or_the_document_differ():
    """A text far from its own document (document 0 at angle 0, the text at angle 1.5, next to document 15):
    ``negatives_from="document"`` mines around document 0, ``"query"`` around the text, and neither gives the own
    document."""
    import numpy as np

    from st_leap.training import mine_hard_negatives

    documents = _circle(30)
    query = np.array([[np.cos(1.5), np.sin(1.5)]], dtype=np.float32)
    near_document = mine_hard_negatives(documents, [0], 3, skip=0, pool=3)
    near_query = mine_hard_negatives(documents, [0], 3, queries=query, skip=0, pool=3)
    assert set(near_document[0].tolist()) == {1, 2, 3}
    assert set(near_query[0].tolist()) == {14, 15, 16}
    # the own document is excluded even when the text sits on it
    on_own = mine_hard_negatives(documents, [15], 3, queries=query, skip=0, pool=3)
    assert set(on_own[0].tolist()) == {13, 14, 16} or set(on_own[0].tolist()) == {14, 16, 17}


def test_retrieval_levers_are_checked():
    """Each new ``retrieval`` key is checked when the config is made; unknown keys are still refused."""
    corpus = {"path": "x"}
    TrainConfig(corpus=corpus, retrieval={"hard_negatives": 2, "negatives_from": "document", "negatives_skip": 0,
                                          "negatives_pool": 2, "soft_weight": 0.5, "soft_scale": 10.0, "weight": 2.0,
                                          "distill": False})
    for retrieval, match in [
        ({"hard_negatives": -1}, "hard_negatives must be an int >= 0"),
        ({"hard_negatives": True}, "hard_negatives"),
        ({"negatives_from": "passage"}, "negatives_from must be one of"),
        ({"hard_negatives": 4, "negatives_pool": 3}, "negatives_pool must be an int >= 4"),
        ({"negatives_skip": -1}, "negatives_skip"),
        ({"soft_weight": -0.5}, "soft_weight must be a finite number >= 0"),
        ({"soft_scale": 0}, "soft_scale must be a finite number > 0"),
        ({"weight": 0.0}, "weight must be a finite number > 0"),
        ({"distill": "no"}, "distill must be true or false"),
        ({"hard_negative": 2}, "retrieval must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(corpus=corpus, retrieval=retrieval)


def test_retrieval_dataset_with_hard_negatives_and_soft_targets(tiny_dir, tmp_path, monkeypatch):
    """With ``hard_negatives`` and ``soft_weight`` each label is (own document, k mined documents, the teacher's
    embedding of the text at the training length, read from the cache the distillation labels filled: no second
    pass); the texts, their order and row 0 are the default dataset's, whose labels keep their (D,) shape."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from st_leap import teacher as teacher_module
    from st_leap import training
    from st_leap.corpus import split_documents
    from tests.test_query_encoder import tiny_corpus

    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "cache"))
    path = tiny_corpus(tmp_path / "corpus.jsonl", n=20)
    common = dict(model=tiny_dir, teacher=tiny_dir, max_steps=2, batch_size=4, num_sentences=40, max_seq_length=16,
                  corpus={"path": str(path), "dev_documents": 5}, save=False, save_steps=None)
    default = TrainConfig(**common, retrieval={"layers": [2]})
    levers = TrainConfig(**common, retrieval={"layers": [2], "hard_negatives": 2, "negatives_skip": 1,
                                              "negatives_pool": 4, "soft_weight": 0.5})
    teacher = SentenceTransformer(tiny_dir, device="cpu")
    texts, owners, corpus = training.corpus_training_texts(default)
    teacher.max_seq_length = 16
    distill_labels = teacher_module.compute_teacher_embeddings(teacher, texts, None, shared_cache=True)  # train()'s
    teacher.max_seq_length = 64  # retrieval_dataset sets the training length itself
    reused = []
    real = training.compute_teacher_embeddings

    def recorded(*args, return_info=False, **kwargs):
        array, info = real(*args, return_info=True, **kwargs)
        reused.append(info.reused)
        return (array, info) if return_info else array

    monkeypatch.setattr(training, "compute_teacher_embeddings", recorded)
    plain = training.retrieval_dataset(default, teacher, document_length=64)
    rich = training.retrieval_dataset(levers, teacher, document_length=64)
    assert teacher.max_seq_length == 64  # restored
    assert np.asarray(plain["label"]).shape == (40, 32)  # the default: as before
    labels = np.asarray(rich["label"])
    assert labels.shape == (40, 4, 32) and rich["sentence"] == plain["sentence"]
    np.testing.assert_allclose(labels[:, 0], np.asarray(plain["label"]), atol=1e-6)
    documents = np.asarray(teacher.encode(corpus.documents))
    dev = set(split_documents(corpus, 5, seed=levers.sentence_seed)[1])  # never trained on, not even as negatives
    for sentence, label in zip(rich["sentence"], labels):
        i = texts.index(sentence)
        for row in label[1:3]:  # a mined document: a row of the index, never the own one
            match = int(np.argmin(np.abs(documents - row).max(axis=1)))
            assert np.abs(documents[match] - row).max() < 1e-4 and match != owners[i] and match not in dev
        np.testing.assert_allclose(label[3], distill_labels[i], atol=1e-6)  # the text's own embedding
    assert reused == [True]  # the texts' embeddings came from the cache the distillation labels filled


def test_retrieval_alone_drops_the_distillation_dataset(tiny_dir, tmp_path, monkeypatch):
    """``retrieval: {distill: false}`` trains the retrieval dataset alone (LEAPLoss never runs); the default
    trains both; hard negatives and soft targets go through the Trainer's collator as (B, R, D) labels."""
    from st_leap import training
    from st_leap.losses import LEAPLoss, QueryRetrievalLoss
    from tests.test_query_encoder import tiny_corpus

    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "cache"))
    path = tiny_corpus(tmp_path / "corpus.jsonl", n=20)
    calls = {"distill": 0, "retrieval": 0, "datasets": None}

    class CountingLEAP(LEAPLoss):
        def forward(self, *args, **kwargs):
            calls["distill"] += 1
            return super().forward(*args, **kwargs)

    class CountingRetrieval(QueryRetrievalLoss):
        def forward(self, features, labels):
            calls["retrieval"] += 1
            calls["shape"] = tuple(labels.shape)
            return super().forward(features, labels)

    class Recording(training.LEAPTrainer):
        def __init__(self, *args, **kwargs):
            calls["datasets"] = sorted(kwargs["train_dataset"])
            calls["losses"] = sorted(kwargs["loss"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(training, "LEAPLoss", CountingLEAP)
    monkeypatch.setattr(training, "QueryRetrievalLoss", CountingRetrieval)
    monkeypatch.setattr(training, "LEAPTrainer", Recording)
    common = dict(model=tiny_dir, teacher=tiny_dir, max_steps=2, batch_size=4, num_sentences=40, warmup_steps=1,
                  corpus={"path": str(path), "dev_documents": 5}, output_dir=str(tmp_path / "run"), save=False,
                  save_steps=None, loss={"final_weight": 1.0})
    alone = {"layers": [2], "distill": False, "hard_negatives": 2, "negatives_pool": 4, "soft_weight": 0.5}
    assert training.train(TrainConfig(**common, retrieval=alone)).steps == 2
    assert calls["datasets"] == calls["losses"] == ["retrieval"]
    assert calls["distill"] == 0 and calls["retrieval"] == 2 and calls["shape"] == (4, 4, 32)
    calls.update(distill=0, retrieval=0)
    assert training.train(TrainConfig(**common, retrieval={"layers": [2]})).steps == 2
    assert calls["datasets"] == calls["losses"] == ["distill", "retrieval"]
    assert calls["distill"] + calls["retrieval"] == 2 and calls["shape"] == (4, 32)


def test_resume_warns_when_a_retrieval_lever_changes(tmp_path):
    """The levers live in ``retrieval``, so resuming with another value warns (the config diff sees them)."""
    from st_leap.training import CONFIG_NAME, warn_config_changes

    before = TrainConfig(corpus={"path": "x"}, retrieval={"layers": [2]})
    (tmp_path / CONFIG_NAME).write_text(json.dumps(before.to_dict()), encoding="utf-8")
    warn_config_changes(before, tmp_path)  # same config: silent (a warning would fail under -W error)
    after = TrainConfig(corpus={"path": "x"}, retrieval={"layers": [2], "hard_negatives": 2, "soft_weight": 0.5})
    with pytest.warns(UserWarning, match=r"differs in \['retrieval'\]"):
        warn_config_changes(after, tmp_path)
