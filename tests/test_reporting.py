from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from st_leap.model import MODEL_DEFAULT
from st_leap.reporting import format_theta, pareto_markdown, write_json, write_text


def test_write_json_is_atomic_and_plain(tmp_path):
    """write_json leaves only the final file (no temporary beside it), turns NaN into null, numpy into Python and
    MODEL_DEFAULT into a readable marker; a rewrite replaces the whole file."""
    path = tmp_path / "sub" / "r.json"
    write_json({"a": float("nan"), "b": np.float32(1.5), "c": np.arange(2), "d": MODEL_DEFAULT}, path)
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5, "c": [0, 1], "d": "model-default"}
    write_json({"x": 1}, path)
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    write_text("hello\n", tmp_path / "t.md")
    assert (tmp_path / "t.md").read_text() == "hello\n"


def test_pareto_markdown_columns_follow_the_rows():
    """The NN@k and measured speed-up columns appear only when the rows carry them; full depth is never 'Pareto'."""
    full = {"theta": None, "stsb": 80.0, "delta": 0.0, "expected_layers": 6.0, "layer_reduction": 1.0,
            "layers_saved": 0.0, "exit_rate": 0.0}
    row = dict(full, theta=0.9, stsb=79.0, delta=-1.0, expected_layers=4.0, layer_reduction=1.5, layers_saved=1 / 3,
               exit_rate=0.5, pareto=True)
    plain = pareto_markdown(full, [row])
    assert "NN@" not in plain[0] and "measured" not in plain[0]
    assert plain[2].split("|")[-2].strip() == "" and plain[3].split("|")[-2].strip() == "yes"
    rich = pareto_markdown(full, [dict(row, nn_at_k=0.8, measured_speedup=1.4)], nn_k=10)
    assert "NN@10" in rich[0] and "measured speed-up" in rich[0] and rich[3].endswith("| 1.40x |")
    assert format_theta(None) == "full" and format_theta(0.95) == "0.95"


def test_save_model_replaces_a_folder_only_when_the_new_one_is_complete(tiny_bert_dir, tmp_path):
    """reporting.save_model writes aside and renames: a save that fails midway leaves the previous model intact."""
    import pytest

    import st_leap
    from st_leap.reporting import save_model

    model = st_leap.from_pretrained(tiny_bert_dir, exit_threshold=0.9)
    target = tmp_path / "model"
    save_model(model, target)
    assert st_leap.load(str(target))[0].exit_threshold == 0.9

    class Broken:
        def save(self, path):
            Path(path).mkdir(parents=True)
            (Path(path) / "modules.json").write_text("[")  # half written
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(Broken(), target)
    assert st_leap.load(str(target))[0].exit_threshold == 0.9  # the previous model is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # and the half-written copy is gone
    model[0].set_exit_defaults(0.8, 1, 2, None)
    save_model(model, target)
    assert st_leap.load(str(target))[0].exit_threshold == 0.8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_save_model_into_a_run_folder_keeps_its_other_contents(tiny_bert_dir, tmp_path):
    """A training run's folder keeps its checkpoints/ when the final model is saved into it, and the model that
    was there before is replaced as a whole."""
    import st_leap
    from st_leap.reporting import save_model

    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    model = st_leap.from_pretrained(tiny_bert_dir, exit_threshold=0.9)
    save_model(model, run)
    model[0].set_exit_defaults(0.8, 1, 2, None)
    save_model(model, run)
    assert st_leap.load(str(run))[0].exit_threshold == 0.8
    assert (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
