from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.query.soup import soup


def make_run(folder, scale, shape=(2, 3)):
    (folder / "query_0_EarlyExitTransformer").mkdir(parents=True)
    (folder / "query_3_ExitMaps").mkdir()
    (folder / "document_0_Transformer").mkdir()
    save_file({"w": torch.full(shape, scale), "steps": torch.tensor([7])},
              folder / "query_0_EarlyExitTransformer" / "model.safetensors")
    save_file({"map": torch.eye(2) * scale}, folder / "query_3_ExitMaps" / "model.safetensors")
    save_file({"doc": torch.full((2,), scale)}, folder / "document_0_Transformer" / "model.safetensors")
    (folder / "query_encoder.json").write_text(json.dumps({"path": str(folder), "depth": 3}))
    return folder


def test_soup_averages_the_query_side_and_keeps_the_document_side(tmp_path):
    runs = [make_run(tmp_path / name, scale) for name, scale in (("a", 1.0), ("b", 2.0), ("c", 6.0))]
    out = soup(runs, tmp_path / "soup")
    query = load_file(out / "query_0_EarlyExitTransformer" / "model.safetensors")
    assert torch.allclose(query["w"], torch.full((2, 3), 3.0))
    assert query["steps"].tolist() == [7]  # integers are not averaged
    assert torch.allclose(load_file(out / "query_3_ExitMaps" / "model.safetensors")["map"], torch.eye(2) * 3.0)
    # the document side is the first run's (the index model's), untouched
    assert torch.equal(load_file(out / "document_0_Transformer" / "model.safetensors")["doc"], torch.full((2,), 1.0))
    record = json.loads((out / "soup.json").read_text())
    assert record == {"path": str(out), "depth": 3, "soup": [str(run) for run in runs]}
    assert not (out / "query_encoder.json").exists()  # the first run's training record is not the soup's


def test_soup_refuses_runs_that_did_not_share_a_shape(tmp_path):
    runs = [make_run(tmp_path / "a", 1.0), make_run(tmp_path / "b", 2.0, shape=(3, 3))]
    with pytest.raises(ValueError, match="differs in shape"):
        soup(runs, tmp_path / "soup")
    other_start = make_run(tmp_path / "c", 2.0)
    (other_start / "query_encoder.json").write_text(json.dumps({"depth": 3, "layers": [0, 3, 5]}))
    with pytest.raises(ValueError, match="did not share a start"):
        soup([runs[0], other_start], tmp_path / "soup")
    with pytest.raises(ValueError, match="at least two"):
        soup(runs[:1], tmp_path / "soup")
    with pytest.raises(ValueError, match="not a saved fit-query-encoder model"):
        soup([tmp_path, runs[0]], tmp_path / "soup")


def test_soup_compares_the_layers_each_run_started_from(tmp_path):
    """Runs recording ``start_layers`` are compared by it (given or picked alike); a run recorded before it existed
    is compared by the layers it was given, and when none were given (``layers`` None: a pick that has changed
    between versions) it is never averaged with one recording them."""
    def record(run, **fields):
        (run / "query_encoder.json").write_text(json.dumps({"depth": 3, "init": "spread", **fields}))
        return run

    picked = record(make_run(tmp_path / "picked", 1.0), layers=None, start_layers=[0, 3, 5])
    given = record(make_run(tmp_path / "given", 3.0), layers=[0, 3, 5], start_layers=[0, 3, 5])
    out = soup([picked, given], tmp_path / "soup")  # the same start, one given and one picked
    assert torch.allclose(load_file(out / "query_0_EarlyExitTransformer" / "model.safetensors")["w"],
                          torch.full((2, 3), 2.0))
    repicked = record(make_run(tmp_path / "repicked", 2.0), layers=None, start_layers=[0, 2, 5])
    with pytest.raises(ValueError, match="did not share a start"):
        soup([picked, repicked], tmp_path / "soup")
    older = record(make_run(tmp_path / "older", 2.0), layers=None)
    with pytest.raises(ValueError, match="did not share a start"):
        soup([picked, older], tmp_path / "soup")
    # an older record whose layers were given (--layers) names its start as well as start_layers does
    older_given = record(make_run(tmp_path / "older_given", 5.0), layers=[0, 3, 5])
    out = soup([picked, older_given], tmp_path / "soup2")
    assert torch.allclose(load_file(out / "query_0_EarlyExitTransformer" / "model.safetensors")["w"],
                          torch.full((2, 3), 3.0))
    with pytest.raises(ValueError, match="did not share a start"):
        soup([repicked, record(make_run(tmp_path / "older_other", 1.0), layers=[0, 3, 5])], tmp_path / "soup")
