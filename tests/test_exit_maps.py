from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import st_leap
from st_leap.exit_maps import ExitMaps, exit_maps_module, fit_exit_maps, layer_embeddings, ridge_solutions
from tests.conftest import WORDS, build_tiny_model_dir

WORD_LIST = WORDS.split() if isinstance(WORDS, str) else list(WORDS)


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORD_LIST) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    return build_tiny_model_dir(tmp_path_factory.mktemp("maps_bert"), "bert")


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory) -> str:
    return build_tiny_model_dir(tmp_path_factory.mktemp("maps_target"), "bert", seed=3, hidden=48)


@pytest.fixture()
def model(bert_dir):
    return st_leap.from_pretrained(bert_dir, device="cpu")


def test_layer_embeddings_equal_encode_at_each_depth(model):
    texts = random_texts(12)
    per_layer = layer_embeddings(model, texts, batch_size=5, show_progress_bar=False)
    assert per_layer.shape == (12, model[0].num_layers, model.get_embedding_dimension())
    for depth in range(1, model[0].num_layers + 1):
        expected = model.encode(texts, truncate_layers=depth, convert_to_tensor=True)
        torch.testing.assert_close(per_layer[:, depth - 1], expected, atol=1e-5, rtol=1e-4)


def test_ridge_recovers_an_affine_map():
    torch.manual_seed(0)
    x = torch.randn(500, 8)
    true_w, true_b = torch.randn(8, 5), torch.randn(5)
    y = x @ true_w + true_b
    (_, weight, bias), = ridge_solutions(x, y, [1e-8])
    torch.testing.assert_close(weight.float(), true_w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bias.float(), true_b, atol=1e-4, rtol=1e-4)
    (_, strong, _), = ridge_solutions(x, y, [1e6])
    assert strong.abs().max() < 0.1 * true_w.abs().max()  # a strong ridge shrinks the map


def test_no_maps_is_todays_model(model, bert_dir):
    texts = random_texts(10)
    assert exit_maps_module(model) is None
    before = model.encode(texts, truncate_layers=2, convert_to_tensor=True)
    plain = st_leap.from_pretrained(bert_dir, device="cpu").encode(texts, truncate_layers=2, convert_to_tensor=True)
    torch.testing.assert_close(before, plain)
    fit_exit_maps(model, random_texts(300, seed=1), show_progress_bar=False)
    # exit_maps=False skips the maps: the embedding of the model without them.
    torch.testing.assert_close(model.encode(texts, truncate_layers=2, exit_maps=False, convert_to_tensor=True), before)


def test_fit_brings_layers_closer_to_the_final_embedding(model):
    texts = random_texts(400, seed=1)
    fit = fit_exit_maps(model, texts, show_progress_bar=False)
    L = model[0].num_layers
    assert sorted(fit.layers) == list(range(1, L))
    held_out = random_texts(60, seed=9)
    final = model.encode(held_out, exit_maps=False, convert_to_tensor=True)
    for layer in range(1, L):
        stats = fit.layers[layer]
        assert stats["heldout_cosine"] > stats["heldout_cosine_before"]
        mapped = model.encode(held_out, truncate_layers=layer, convert_to_tensor=True)
        raw = model.encode(held_out, truncate_layers=layer, exit_maps=False, convert_to_tensor=True)
        assert torch.cosine_similarity(mapped, final).mean() > torch.cosine_similarity(raw, final).mean()
    # The last layer keeps the identity when the target is the model itself.
    torch.testing.assert_close(model.encode(held_out, convert_to_tensor=True), final)


def test_target_of_another_width(model, other_dir):
    target = st_leap.from_pretrained(other_dir, device="cpu")
    fit_exit_maps(model, random_texts(400, seed=2), target=target, show_progress_bar=False)
    texts = random_texts(8, seed=5)
    assert model.get_embedding_dimension() == 48
    assert model.encode(texts).shape == (8, 48)
    assert model.encode(texts, truncate_layers=1).shape == (8, 48)
    assert exit_maps_module(model).fitted_layers == list(range(1, model[0].num_layers + 1))


def test_mixed_exit_layers_in_one_batch_equal_one_at_a_time(bert_dir):
    model = st_leap.from_pretrained(bert_dir, device="cpu")
    fit_exit_maps(model, random_texts(300, seed=4), show_progress_bar=False)
    texts = random_texts(40, seed=6)
    thresholds = [0.3, 0.5, 0.7, 0.9]
    for theta in thresholds:
        result = st_leap.encode_with_exits(model, texts, exit_threshold=theta, exit_min_layer=1, batch_size=40)
        if len(set(np.asarray(result.exit_layers).tolist())) > 1:
            break
    else:
        pytest.skip("no threshold mixed the exit layers of this tiny model")
    batched = np.asarray(result.embeddings)
    alone = np.stack(
        [model.encode([t], exit_threshold=theta, exit_min_layer=1, batch_size=1)[0] for t in texts]
    )
    np.testing.assert_allclose(batched, alone, atol=2e-5)
    # Each row is its own exit layer's map: the same as a static cut at that layer.
    for i, layer in enumerate(np.asarray(result.exit_layers).tolist()):
        cut = model.encode([texts[i]], truncate_layers=int(layer))[0]
        np.testing.assert_allclose(batched[i], cut, atol=2e-5)


def test_save_and_reload_exactly(model, tmp_path):
    fit_exit_maps(model, random_texts(300, seed=7), show_progress_bar=False)
    texts = random_texts(10, seed=8)
    expected = model.encode(texts, truncate_layers=2)
    model.save(str(tmp_path / "m"))
    again = st_leap.load(str(tmp_path / "m"), device="cpu")
    maps = exit_maps_module(again)
    assert maps is not None and maps.fitted_layers == exit_maps_module(model).fitted_layers
    np.testing.assert_array_equal(again.encode(texts, truncate_layers=2), expected)


def _saved_maps_folder(model, tmp_path) -> Path:
    fit_exit_maps(model, random_texts(300, seed=7), show_progress_bar=False)
    model.save(str(tmp_path / "m"))
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    entry = next(m for m in modules if m["type"].endswith("ExitMaps"))
    return tmp_path / "m" / entry["path"]


def test_corrupt_maps_file_fails_at_load_naming_it(model, tmp_path):
    folder = _saved_maps_folder(model, tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        st_leap.load(str(tmp_path / "m"), device="cpu")


def test_mismatched_maps_fail_at_load_naming_them(model, tmp_path):
    folder = _saved_maps_folder(model, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_layers"] += 1  # the config no longer matches the weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model.safetensors"):
        st_leap.load(str(tmp_path / "m"), device="cpu")


def test_maps_of_another_depth_are_refused(model):
    wrong = ExitMaps(model[0].num_layers + 2, model.get_embedding_dimension())
    with pytest.raises(ValueError, match="layers"):
        wrong.on_model_ready(model)


def test_fit_needs_enough_texts(model):
    with pytest.raises(ValueError, match="at least 20"):
        fit_exit_maps(model, ["a man"] * 5, show_progress_bar=False)


def test_fit_on_a_corpus_uses_its_query_like_texts(model, tmp_path):
    rng = random.Random(1)
    lines = []
    for i in range(30):
        text = " ".join(" ".join(rng.choice(WORD_LIST) for _ in range(6)).capitalize() + "." for _ in range(3))
        lines.append(json.dumps({"_id": f"d{i}", "title": "", "text": text}))
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fit = fit_exit_maps(model, corpus=tmp_path / "corpus.jsonl", max_corpus_texts=50, show_progress_bar=False)
    assert fit.num_texts == 50  # 30 documents x (3 sentences + 3 spans), capped
    assert exit_maps_module(model) is fit.maps
    with pytest.raises(ValueError, match="either texts or corpus"):
        fit_exit_maps(model, random_texts(30), corpus=tmp_path / "corpus.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"_id": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: missing text"):
        fit_exit_maps(model, corpus=tmp_path / "bad.jsonl")
