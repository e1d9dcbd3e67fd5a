from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize

import st_leap
from st_leap.diagnostics import layer_pooled_states
from st_leap.exit_policy import ExitStats
from st_leap.model import as_early_exit
from tests.conftest import SENTENCES, stock_model


def test_from_pretrained_converts_plain_model_with_defaults(tiny_bert_dir):
    """A plain model gets an EarlyExitTransformer with full depth, k=1 and l_min = half the depth."""
    model = st_leap.from_pretrained(tiny_bert_dir)
    first = model[0]
    assert isinstance(first, st_leap.EarlyExitTransformer)
    assert (first.exit_threshold, first.exit_patience, first.exit_min_layer) == (None, 1, 2)
    assert set(model.get_model_kwargs()) >= {"exit_threshold", "exit_patience", "exit_min_layer"}


def test_from_pretrained_overrides_only_given_settings(tiny_bert_dir, tmp_path):
    """Reloading a saved model keeps its saved settings except the ones passed explicitly."""
    st_leap.from_pretrained(tiny_bert_dir, exit_threshold=0.9, exit_patience=2, exit_min_layer=3).save(str(tmp_path))
    assert st_leap.load(str(tmp_path))[0].exit_threshold == 0.9
    again = st_leap.from_pretrained(str(tmp_path), exit_threshold=None)
    assert (again[0].exit_threshold, again[0].exit_patience, again[0].exit_min_layer) == (None, 2, 3)


def test_as_early_exit_shares_weights(tiny_bert_dir):
    """Conversion reuses the loaded weights instead of copying them."""
    model = stock_model(tiny_bert_dir)
    weights = model[0].auto_model.embeddings.word_embeddings.weight
    as_early_exit(model, exit_threshold=0.8)
    assert model[0].auto_model.embeddings.word_embeddings.weight is weights
    assert model[0].exit_threshold == 0.8


def test_as_early_exit_rejects_other_first_modules():
    """A model that does not start with a Transformer gets a clear error."""
    with pytest.raises(ValueError, match="first module is a Transformer"):
        as_early_exit(SentenceTransformer(modules=[Normalize()]))


def test_from_pretrained_rejects_bad_settings(tiny_bert_dir):
    """Invalid default settings fail at load time, naming the argument."""
    with pytest.raises(ValueError, match="exit_min_layer"):
        st_leap.from_pretrained(tiny_bert_dir, exit_min_layer=7)


def test_encode_with_exits_returns_the_call_s_embeddings_layers_and_counts(smooth_bert_dir):
    """encode_with_exits = encode's embeddings + output_value=None's exit layers + their counts, for every role,
    whatever the chunking (issue 17)."""
    from tests.test_modules import early_model, mixed_threshold

    model = early_model(smooth_bert_dir, exit_min_layer=2)
    theta = mixed_threshold(model, SENTENCES, min_layer=2)
    model[0].set_exit_defaults({"query": theta, "default": None}, 1, 2, None)
    for task, encode in (("query", model.encode_query), ("document", model.encode_document), (None, model.encode)):
        reference = encode(SENTENCES, output_value=None, batch_size=4)
        for chunk_size in (None, 3):
            result = st_leap.encode_with_exits(model, SENTENCES, task=task, batch_size=4, chunk_size=chunk_size)
            assert result.role == (task or "default")
            assert result.embeddings.shape == (len(SENTENCES), model.get_embedding_dimension())
            np.testing.assert_allclose(
                result.embeddings, np.stack([r["sentence_embedding"].numpy() for r in reference]), atol=1e-5
            )
            assert result.exit_layers.tolist() == [int(r["exit_layer"]) for r in reference]
            assert result.stats.num_samples == len(SENTENCES)
            assert result.stats.counts == ExitStats.from_exit_layers(result.exit_layers, model[0].num_layers).counts
    assert st_leap.encode_with_exits(model, SENTENCES, task="query").stats.exit_rate > 0
    assert st_leap.encode_with_exits(model, SENTENCES).stats.exit_rate == 0


def test_multi_process_pool_honours_exit_kwargs_and_returns_exit_layers(smooth_bert_dir):
    """Two CPU workers: encode(pool=..., exit_threshold=...) equals single-process encode, and
    encode_with_exits(pool=...) brings every text's exit layer back to the parent (issue 16)."""
    from tests.test_modules import early_model, mixed_threshold

    model = early_model(smooth_bert_dir, exit_min_layer=2)
    theta = mixed_threshold(model, SENTENCES, min_layer=2)
    texts = SENTENCES * 3
    single = st_leap.encode_with_exits(model, texts, exit_threshold=theta, batch_size=4)
    assert 0 < single.stats.exit_rate < 1
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    try:
        pooled_embeddings = model.encode(texts, pool=pool, exit_threshold=theta, batch_size=4, chunk_size=5)
        pooled = st_leap.encode_with_exits(model, texts, pool=pool, exit_threshold=theta, batch_size=4, chunk_size=5)
    finally:
        model.stop_multi_process_pool(pool)
    np.testing.assert_allclose(pooled_embeddings, single.embeddings, atol=1e-5)
    np.testing.assert_allclose(pooled.embeddings, single.embeddings, atol=1e-5)
    assert pooled.exit_layers.tolist() == single.exit_layers.tolist()
    assert pooled.stats.counts == single.stats.counts
    # pickling dropped transformers' hidden-state hooks; they come back when hidden states are asked for again
    assert layer_pooled_states(model, SENTENCES[:2], show_progress_bar=False).shape[1] == model[0].num_layers + 1


def _corrupt(folder, edit) -> None:
    import json

    path = folder / edit[0]
    if edit[1] is None:
        path.unlink()
        return
    data = json.loads(path.read_text())
    edit[1](data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (("modules.json", None), FileNotFoundError, r"modules.json is missing: .* saved st_leap model"),
        (
            ("sentence_bert_config.json", lambda d: d.update(exit_threshold=1.5)),
            ValueError,
            r"sentence_bert_config.json holds an invalid exit default: exit_threshold must be in \(0, 1\]",
        ),
        (
            ("sentence_bert_config.json", lambda d: d.update(exit_min_layer=9)),
            ValueError,
            r"sentence_bert_config.json holds an invalid exit default: exit_min_layer must be in \[1, 4\]",
        ),
        (
            ("sentence_bert_config.json", lambda d: d.update(exit_threshold={"queries": 0.9})),
            ValueError,
            r"invalid exit default: exit_threshold given per role",
        ),
        (("modules.json", lambda d: d[1].update(type="evil.module.Pooling")), ValueError, r"evil.module.Pooling"),
    ],
)
def test_load_rejects_corrupt_or_partial_model_folders(tiny_bert_dir, tmp_path, edit, error, message):
    """A partial or corrupt saved model fails at load with an error naming the file, never loads as something
    else (issue 17)."""
    folder = tmp_path / "saved"
    st_leap.from_pretrained(tiny_bert_dir, exit_threshold=0.9).save(str(folder))
    st_leap.load(str(folder))  # intact: loads
    _corrupt(folder, edit)
    with pytest.raises(error, match=message):
        st_leap.load(str(folder))


def test_load_names_a_missing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        st_leap.load(str(tmp_path / "nowhere"))
