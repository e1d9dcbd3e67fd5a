from __future__ import annotations

import random

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
from transformers import AlbertConfig, AlbertModel

import st_leap
from st_leap.diagnostics import layer_pooled_states
from st_leap.exit_policy import ExitStats, exit_layers_from_pooled, first_checked_layer, mean_pool
from tests.conftest import SENTENCES, VOCAB, stock_model, threshold_between


def early_model(model_dir: str, **exit_kwargs) -> SentenceTransformer:
    transformer = st_leap.EarlyExitTransformer(model_dir, **exit_kwargs)
    return SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())], device="cpu")


def mixed_threshold(model: SentenceTransformer, sentences: list[str], min_layer: int = 2, patience: int = 1) -> float:
    """A theta at which some sentences exit at their first checked layer and others run on, kept
    :data:`~tests.conftest.THRESHOLD_MARGIN` away from every cosine the exit rule reads at any layer, so that no
    sentence sits on it (alone or batched, any installed transformers)."""
    pooled = layer_pooled_states(model, sentences, show_progress_bar=False)
    first = first_checked_layer(patience, min_layer)
    cos = [
        torch.nn.functional.cosine_similarity(pooled[:, layer], pooled[:, layer - patience], dim=-1)
        for layer in range(first, pooled.shape[1] - 1)  # the last layer exits whatever the cosine
    ]
    theta = threshold_between(cos[0], torch.cat(cos))
    assert 0.0 < theta <= 1.0, f"the split threshold {theta} is not a valid exit_threshold"
    return theta


def test_early_exit_transformer_full_depth_equals_stock(tiny_model_dir):
    """exit_threshold=None gives the stock Transformer's embeddings (max abs diff <= 1e-6), for every architecture."""
    stock = stock_model(tiny_model_dir).encode(SENTENCES, convert_to_tensor=True)
    model = early_model(tiny_model_dir)
    assert torch.allclose(model.encode(SENTENCES, convert_to_tensor=True), stock, atol=1e-6, rtol=0)
    assert torch.allclose(model.encode(SENTENCES, convert_to_tensor=True, exit_threshold=None), stock, atol=1e-6, rtol=0)
    assert model[0].exit_stats.counts[-1] == len(SENTENCES)


def test_early_exit_transformer_batch_invariant(tiny_model_dir):
    """A text gets the same exit layer and embedding (<= 1e-5) alone or in any batch, order and batch_size."""
    model = early_model(tiny_model_dir, exit_min_layer=2)
    theta = mixed_threshold(model, SENTENCES)
    alone = [model.encode([s], exit_threshold=theta, output_value=None)[0] for s in SENTENCES]
    alone_layers = [int(o["exit_layer"]) for o in alone]
    assert len(set(alone_layers)) > 1, "the threshold must split the sentences, or compaction is not exercised"
    rng = random.Random(0)
    for batch_size in (2, 3, 4, 32):
        order = list(range(len(SENTENCES)))
        rng.shuffle(order)
        out = model.encode([SENTENCES[i] for i in order], exit_threshold=theta, output_value=None, batch_size=batch_size)
        for position, i in enumerate(order):
            assert int(out[position]["exit_layer"]) == alone_layers[i]
            torch.testing.assert_close(
                out[position]["sentence_embedding"], alone[i]["sentence_embedding"], atol=1e-5, rtol=0
            )


def test_early_exit_transformer_forced_exit_equals_hidden_state_mean(smooth_bert_dir):
    """When every sample is forced out at layer l, its embedding is the mean pooling of HF hidden_states[l]."""
    model = early_model(smooth_bert_dir)
    features = model.preprocess(SENTENCES)
    with torch.no_grad():
        hidden_states = model[0].auto_model(
            input_ids=features["input_ids"], attention_mask=features["attention_mask"], output_hidden_states=True
        ).hidden_states
    expected = [mean_pool(h, features["attention_mask"]) for h in hidden_states]
    num_layers = model[0].num_layers
    for layer in range(2, num_layers):
        out = model.encode(SENTENCES, exit_threshold=0.01, exit_min_layer=layer, convert_to_tensor=True)
        assert model[0].exit_stats.counts[layer - 1] == len(SENTENCES)
        torch.testing.assert_close(out, expected[layer], atol=1e-5, rtol=0)
        # the neighbouring layers really differ, so this comparison can fail
        assert (expected[layer + 1] - expected[layer]).abs().max() > 1e-4


def test_early_exit_transformer_exits_match_exit_policy(tiny_bert_dir):
    """The layer loop makes the same decisions as exit_policy applied to the full-depth pooled states."""
    model = early_model(tiny_bert_dir)
    pooled = layer_pooled_states(model, SENTENCES, show_progress_bar=False)
    for patience, min_layer in [(1, 2), (2, 3), (1, 3)]:
        theta = mixed_threshold(model, SENTENCES, min_layer=min_layer, patience=patience)
        out = model.encode(
            SENTENCES, exit_threshold=theta, exit_patience=patience, exit_min_layer=min_layer, output_value=None
        )
        expected = exit_layers_from_pooled(pooled, theta, patience, min_layer)
        assert [int(o["exit_layer"]) for o in out] == expected.tolist()


def test_early_exit_transformer_exit_stats_cover_last_encode_call(tiny_bert_dir):
    """exit_stats counts exactly the samples of the last encode call and agrees with their exit_layer values."""
    model = early_model(tiny_bert_dir, exit_min_layer=2)
    theta = mixed_threshold(model, SENTENCES)
    model.encode(SENTENCES * 3, exit_threshold=theta, batch_size=4)
    out = model.encode(SENTENCES, exit_threshold=theta, output_value=None, batch_size=4)
    layers = torch.tensor([int(o["exit_layer"]) for o in out])
    stats = model[0].exit_stats
    assert stats.num_samples == len(SENTENCES)
    assert stats.counts == torch.bincount(layers - 1, minlength=model[0].num_layers).tolist()
    assert stats.expected_layers == pytest.approx(layers.float().mean().item())
    assert stats.exit_rate == pytest.approx((layers < model[0].num_layers).float().mean().item())


def test_early_exit_transformer_pipeline_after_exit(smooth_bert_dir):
    """Modules after the transformer (Pooling, Normalize) see the exit layer's hidden states."""
    transformer = st_leap.EarlyExitTransformer(smooth_bert_dir)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="max"), Normalize()]
    )
    out = model.encode(SENTENCES, exit_threshold=0.01, exit_min_layer=2, output_value=None)
    for o in out:
        mask = o["attention_mask"].bool()
        expected = o["token_embeddings"][mask].max(dim=0).values
        torch.testing.assert_close(o["sentence_embedding"], torch.nn.functional.normalize(expected, dim=0))
        assert int(o["exit_layer"]) == 2


def test_early_exit_transformer_training_mode_runs_full_depth(tiny_bert_dir):
    """In training mode the module ignores the exit threshold and returns every layer when asked."""
    model = early_model(tiny_bert_dir, exit_threshold=0.01, exit_min_layer=2)
    model[0].auto_model.config.output_hidden_states = True
    model.train()
    features = model.preprocess(SENTENCES[:3])
    out = model(features)
    assert out["exit_layer"].tolist() == [model[0].num_layers] * 3
    assert len(out["all_layer_embeddings"]) == model[0].num_layers + 1
    out["sentence_embedding"].sum().backward()
    assert model[0].auto_model.encoder.layer[-1].output.dense.weight.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"exit_threshold": 0.0}, "exit_threshold"),
        ({"exit_threshold": 1.5}, "exit_threshold"),
        ({"exit_threshold": float("nan")}, "exit_threshold"),
        ({"exit_threshold": "0.9"}, "exit_threshold"),
        ({"exit_threshold": 0.9, "exit_patience": 0}, "exit_patience"),
        ({"exit_threshold": 0.9, "exit_patience": 1.5}, "exit_patience"),
        ({"exit_threshold": 0.9, "exit_min_layer": 0}, "exit_min_layer"),
        ({"exit_threshold": 0.9, "exit_min_layer": 5}, "exit_min_layer"),
        ({"exit_threshold": 0.9, "exit_min_layer": 2.0}, "exit_min_layer"),
    ],
)
def test_early_exit_transformer_bad_settings_raise(tiny_bert_dir, kwargs, name):
    """Invalid exit settings raise a ValueError naming the argument, in encode and in the constructor."""
    model = early_model(tiny_bert_dir)
    with pytest.raises(ValueError, match=name):
        model.encode(SENTENCES[:2], **kwargs)
    with pytest.raises(ValueError, match=name):
        st_leap.EarlyExitTransformer(tiny_bert_dir, **kwargs)


def test_early_exit_transformer_misspelled_kwarg_raises(tiny_bert_dir):
    """A misspelled encode kwarg is an error, not silently ignored."""
    with pytest.raises(ValueError, match="exit_treshold"):
        early_model(tiny_bert_dir).encode(SENTENCES[:2], exit_treshold=0.9)


def test_early_exit_transformer_edge_inputs(tiny_bert_dir):
    """Empty lists, empty strings and texts longer than max_seq_length behave as in sentence-transformers."""
    model = early_model(tiny_bert_dir, exit_threshold=0.5, exit_min_layer=2)
    stock = stock_model(tiny_bert_dir)
    assert model.encode([]).shape == stock.encode([]).shape
    long_text = " ".join(VOCAB[5:] * 10)
    texts = ["", long_text, "a man"]
    out = model.encode(texts, output_value=None)
    assert out[1]["input_ids"].shape[0] <= model.max_seq_length
    assert model.encode(texts).shape == stock.encode(texts).shape
    torch.testing.assert_close(
        model.encode(texts, exit_threshold=None, convert_to_tensor=True), stock.encode(texts, convert_to_tensor=True)
    )


def test_early_exit_transformer_unsupported_architecture(tmp_path):
    """An encoder without a layer adapter gets a clear error that names the supported architectures."""
    AlbertModel(AlbertConfig(vocab_size=len(VOCAB), hidden_size=32, num_attention_heads=4, intermediate_size=64, embedding_size=16, num_hidden_layers=2)).save_pretrained(tmp_path)
    from transformers import BertTokenizer

    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="albert.*Supported model types: bert, roberta"):
        st_leap.EarlyExitTransformer(str(tmp_path))


def test_early_exit_transformer_save_load_round_trip(tiny_model_dir, tmp_path):
    """A saved model reloads with st_leap.load with the same exit defaults, embeddings and exits."""
    model = early_model(tiny_model_dir, exit_min_layer=2)
    model[0].exit_threshold = mixed_threshold(model, SENTENCES)
    model.save(str(tmp_path))
    again = st_leap.load(str(tmp_path))
    assert isinstance(again[0], st_leap.EarlyExitTransformer)
    assert (again[0].exit_threshold, again[0].exit_patience, again[0].exit_min_layer) == (
        model[0].exit_threshold,
        model[0].exit_patience,
        model[0].exit_min_layer,
    )
    before = model.encode(SENTENCES, output_value=None)
    after = again.encode(SENTENCES, output_value=None)
    for b, a in zip(before, after):
        assert int(a["exit_layer"]) == int(b["exit_layer"])
        assert torch.equal(a["sentence_embedding"], b["sentence_embedding"])


def test_early_exit_model_pickles_with_its_exits(tiny_bert_dir):
    """The model pickles (sentence-transformers' multi-process pool and torch.save need it) and the copy exits
    at the same layers with the same embeddings (issue 16)."""
    import pickle

    model = early_model(tiny_bert_dir, exit_threshold=0.5, exit_min_layer=2)
    copy = pickle.loads(pickle.dumps(model))
    a = model.encode(SENTENCES, output_value=None)
    b = copy.encode(SENTENCES, output_value=None)
    assert [int(x["exit_layer"]) for x in a] == [int(x["exit_layer"]) for x in b]
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x["sentence_embedding"], y["sentence_embedding"], atol=1e-6)


def test_truncate_layers_equals_a_truncated_copy(tiny_model_dir):
    """encode(truncate_layers=n) computes what a copy cut to its first n layers computes, for every sample and
    every architecture; exit_layer and exit_stats say n (issue 14)."""
    from st_leap.modules import encoder_layers

    model = early_model(tiny_model_dir)
    for n in (1, 2, 3):
        cut = stock_model(tiny_model_dir)
        del encoder_layers(cut[0].auto_model)[n:]
        want = cut.encode(SENTENCES, convert_to_tensor=True)
        out = model.encode(SENTENCES, truncate_layers=n, output_value=None)
        got = torch.stack([o["sentence_embedding"] for o in out])
        assert torch.allclose(got, want, atol=1e-5), n
        assert {int(o["exit_layer"]) for o in out} == {n}
        assert model[0].exit_stats.counts[n - 1] == len(SENTENCES)


def test_truncate_layers_with_exits_saved_and_validated(tiny_bert_dir, tmp_path):
    """With a threshold too, samples exit at or before the static depth; the default is saved and reloaded;
    bad depths are a ValueError naming truncate_layers; training runs the whole encoder."""
    model = early_model(tiny_bert_dir, exit_min_layer=2)
    theta = mixed_threshold(model, SENTENCES)
    layers = [int(o["exit_layer"]) for o in model.encode(SENTENCES, exit_threshold=theta, truncate_layers=3, output_value=None)]
    assert max(layers) == 3 and min(layers) == 2
    depth3 = model.encode(SENTENCES, truncate_layers=3, convert_to_tensor=True)
    mixed = model.encode(SENTENCES, exit_threshold=theta, truncate_layers=3, convert_to_tensor=True)
    ran_through = torch.tensor(layers) == 3
    assert torch.allclose(mixed[ran_through], depth3[ran_through], atol=1e-5)

    saved = st_leap.from_pretrained(tiny_bert_dir, truncate_layers=2)
    saved.save(str(tmp_path))
    again = st_leap.load(str(tmp_path))
    assert again[0].truncate_layers == 2
    assert torch.allclose(again.encode(SENTENCES, convert_to_tensor=True), model.encode(SENTENCES, truncate_layers=2, convert_to_tensor=True), atol=1e-5)
    assert torch.allclose(again.encode(SENTENCES, truncate_layers=None, convert_to_tensor=True), model.encode(SENTENCES, convert_to_tensor=True), atol=1e-6)
    for bad in (0, 5, 2.5, True):
        with pytest.raises(ValueError, match="truncate_layers"):
            model.encode(SENTENCES, truncate_layers=bad)
    model.train()
    features = model.preprocess(SENTENCES[:2])
    assert model[0](dict(features), truncate_layers=1)["exit_layer"].tolist() == [4, 4]


def test_exit_settings_per_role_follow_encode_query_and_encode_document(smooth_bert_dir, tmp_path):
    """exit_threshold={"query": theta, ...}: encode_query exits as the rule says, encode_document and plain encode
    run full depth (= stock); the mapping survives save/load; an encode kwarg may be per role too (issue 13)."""
    probe = early_model(smooth_bert_dir)
    theta = mixed_threshold(probe, SENTENCES, min_layer=2)
    expected = exit_layers_from_pooled(layer_pooled_states(probe, SENTENCES, show_progress_bar=False), theta, 1, 2)
    assert 0 < int((expected < probe[0].num_layers).sum()) < len(SENTENCES)
    stock = stock_model(smooth_bert_dir).encode(SENTENCES, convert_to_tensor=True)

    model = early_model(smooth_bert_dir, exit_threshold={"query": theta, "document": None}, exit_min_layer=2)
    assert model[0].exit_threshold == {"query": theta, "document": None, "default": None}

    def layers(outputs):
        return torch.stack([o["exit_layer"] for o in outputs])

    for loaded in (model, None):
        if loaded is None:
            model.save(str(tmp_path / "saved"))
            loaded = st_leap.load(str(tmp_path / "saved"))
            assert loaded[0].exit_threshold == {"query": theta, "document": None, "default": None}
        assert torch.equal(layers(loaded.encode_query(SENTENCES, output_value=None)), expected)
        assert loaded[0].exit_stats.counts == ExitStats.from_exit_layers(expected, loaded[0].num_layers).counts
        for encode in (loaded.encode_document, loaded.encode):
            assert torch.allclose(encode(SENTENCES, convert_to_tensor=True), stock, atol=1e-6, rtol=0)
            assert loaded[0].exit_stats.counts[-1] == len(SENTENCES)
    override = layers(model.encode_document(SENTENCES, output_value=None, exit_threshold={"document": theta}))
    assert torch.equal(override, expected)
    with pytest.raises(ValueError, match="given per role"):
        model.encode(SENTENCES, exit_threshold={"passage": 0.9})


def test_exit_stats_are_per_thread_and_exact_under_concurrency(smooth_bert_dir):
    """Four threads encode at once with different thresholds: each gets exactly its own embeddings, exit layers
    and exit_stats counts, every round (issue 17)."""
    import threading

    model = early_model(smooth_bert_dir, exit_min_layer=2)
    base = mixed_threshold(model, SENTENCES, min_layer=2)
    thresholds = [None, base, min(1.0, base + 0.02), max(1e-3, base - 0.05)]
    reference = {}
    for theta in thresholds:
        out = model.encode(SENTENCES, exit_threshold=theta, output_value=None, batch_size=3)
        reference[theta] = (
            torch.stack([o["sentence_embedding"] for o in out]),
            torch.stack([o["exit_layer"] for o in out]),
            list(model[0].exit_stats.counts),
        )
    assert len({tuple(r[2]) for r in reference.values()}) > 2, "thresholds must give different counts"
    barrier = threading.Barrier(len(thresholds))
    failures: list[str] = []

    def worker(theta):
        barrier.wait()
        for _ in range(15):
            out = model.encode(SENTENCES, exit_threshold=theta, output_value=None, batch_size=3)
            embeddings = torch.stack([o["sentence_embedding"] for o in out])
            layers = torch.stack([o["exit_layer"] for o in out])
            want = reference[theta]
            if not torch.equal(layers, want[1]) or not torch.allclose(embeddings, want[0], atol=1e-5, rtol=0):
                failures.append(f"theta {theta}: outputs differ")
            if model[0].exit_stats.counts != want[2]:
                failures.append(f"theta {theta}: counts {model[0].exit_stats.counts} != {want[2]}")

    threads = [threading.Thread(target=worker, args=(theta,)) for theta in thresholds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]


@pytest.mark.parametrize("bad", [None, 3, b"bytes", 1.5])
def test_encode_rejects_non_text_inputs_with_the_item_named(tiny_bert_dir, bad):
    model = early_model(tiny_bert_dir)
    with pytest.raises(TypeError, match=r"inputs\[1\] must be a string"):
        model.encode(["a dog", bad])


@pytest.mark.parametrize("dynamic", [None, True])
def test_layer_loop_traces_under_torch_compile(smooth_bert_dir, dynamic):
    """model.compile(dynamic=True) used to crash on the deque of the layer loop, and with inductor on a dynamo
    internal error (issue 16): the data-dependent exit loop now runs as Python and its layers are compiled. Backend
    "eager" here (dynamo tracing, no C++ compile in CI); the same embeddings and exits as without compile."""
    import torch._dynamo

    model = early_model(smooth_bert_dir, exit_min_layer=2)
    theta = mixed_threshold(model, SENTENCES, min_layer=2)
    eager = model.encode(SENTENCES, exit_threshold=theta, output_value=None, batch_size=4)
    torch._dynamo.reset()
    model.compile(backend="eager", dynamic=dynamic)
    compiled = model.encode(SENTENCES, exit_threshold=theta, output_value=None, batch_size=4)
    torch._dynamo.reset()
    assert [int(o["exit_layer"]) for o in compiled] == [int(o["exit_layer"]) for o in eager]
    torch.testing.assert_close(
        torch.stack([o["sentence_embedding"] for o in compiled]),
        torch.stack([o["sentence_embedding"] for o in eager]),
        atol=1e-5,
        rtol=0,
    )
