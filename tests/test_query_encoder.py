from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_leap
from st_leap.backends import query_side
from st_leap.corpus import read_corpus
from st_leap.exit_maps import MIN_FIT_TEXTS
from st_leap.model import num_layers
from st_leap.modules import encoder_layers
from st_leap.query_encoder import fit_query_encoder, init_student, pick_layers, read_result
from tests.conftest import WORDS, build_tiny_model_dir

QUERIES = ["a man is playing the guitar", "the dog in the park", "two cats are eating bread"]


def tiny_corpus(path, n: int = 40, seed: int = 0):
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            parts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "." for _ in range(3)]
            title = " ".join(rng.choice(WORDS) for _ in range(3))
            f.write(json.dumps({"_id": f"doc{i}", "title": title, "text": " ".join(parts)}) + "\n")
    return path


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> str:
    return build_tiny_model_dir(tmp_path_factory.mktemp("qe_index"), "bert", num_layers=4)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("qe_corpus") / "corpus.jsonl")


SMALL = dict(depth=2, max_steps=4, batch_size=8, eval_steps=2, dev_documents=8, dev_queries=8, map_texts=60)


@pytest.fixture(scope="module")
def fitted(index_dir, corpus_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("qe_out") / "model"
    result = fit_query_encoder(index_dir, corpus_path, out, **SMALL)
    return result


def test_pick_layers():
    assert st_leap.fit_query_encoder is fit_query_encoder  # the top-level name
    assert pick_layers(6, 3) == [0, 1, 2]
    assert pick_layers(6, 3, "spread") == [0, 3, 5]  # 2.5 goes to the deeper layer
    assert pick_layers(12, 3, "spread") == [0, 6, 11]
    assert pick_layers(12, 4, "spread") == [0, 4, 7, 11]
    assert pick_layers(5, 3, "spread") == [0, 2, 4]
    assert pick_layers(6, 2, "spread") == [0, 5]
    assert pick_layers(6, 1, "spread") == [0]
    assert pick_layers(6, 2, "leap") == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="depth"):
        pick_layers(6, 7)
    with pytest.raises(ValueError, match="init"):
        pick_layers(6, 2, "last")


@pytest.mark.parametrize("init", ["first", "spread", "leap"])
def test_student_starts_from_the_index_models_layers(index_dir, init):
    index = SentenceTransformer(index_dir, device="cpu")
    student = init_student(index_dir, 2, init)
    assert num_layers(student) == len(pick_layers(4, 2, init))
    source = encoder_layers(index[0].auto_model)
    for mine, theirs in zip(encoder_layers(student[0].auto_model), [source[i] for i in pick_layers(4, 2, init)]):
        for a, b in zip(mine.parameters(), theirs.parameters()):
            assert torch.equal(a, b)


def test_student_starts_from_the_layers_given(index_dir, corpus_path, tmp_path):
    """``layers`` picks the start's layers instead of ``init``; the run records them; a bad list is refused before
    any weights load (the layer count from the model's config)."""
    index = SentenceTransformer(index_dir, device="cpu")
    source = encoder_layers(index[0].auto_model)
    assert pick_layers(4, 2, "spread") != [1, 2]
    student = init_student(index_dir, 2, "spread", layers=[1, 2])
    for mine, theirs in zip(encoder_layers(student[0].auto_model), [source[1], source[2]]):
        for a, b in zip(mine.parameters(), theirs.parameters()):
            assert torch.equal(a, b)
    result = fit_query_encoder(index_dir, corpus_path, tmp_path / "given", layers=[1, 2],
                               **dict(SMALL, max_steps=2, eval_steps=None))
    assert result.layers == [1, 2] and read_result(result.path)["layers"] == [1, 2]
    assert result.start_layers == [1, 2] and read_result(result.path)["start_layers"] == [1, 2]
    started = st_leap.load(str(tmp_path / "given-training" / "init"), device="cpu")  # the run's saved start
    for mine, theirs in zip(encoder_layers(started[0].auto_model), [source[1], source[2]]):
        for a, b in zip(mine.parameters(), theirs.parameters()):
            assert torch.equal(a, b)
    for bad, match in [([0, 4], "the model has 4 layers"), ([2, 1], "increasing order"), ([0, 1, 2], "2 distinct"),
                       ([1, 1], "distinct"), ("0,1", "distinct")]:
        with pytest.raises(ValueError, match=match):
            fit_query_encoder(index_dir, corpus_path, tmp_path / "bad", layers=bad, **SMALL)
    with pytest.raises(ValueError, match="init='leap' keeps every layer"):
        fit_query_encoder(index_dir, corpus_path, tmp_path / "bad", layers=[0, 3], init="leap", **SMALL)


def test_router_roles_and_reload(fitted, index_dir, corpus_path):
    model = st_leap.load(fitted.path, device="cpu")
    shallow = st_leap.load(fitted.student_path, device="cpu")
    assert num_layers(shallow) == 2
    np.testing.assert_allclose(model.encode_query(QUERIES), shallow.encode(QUERIES), atol=1e-6)
    documents = read_corpus(corpus_path).documents[:5]
    index = SentenceTransformer(index_dir, device="cpu")
    np.testing.assert_allclose(model.encode_document(documents), index.encode(documents), atol=1e-6)
    np.testing.assert_allclose(model.encode(documents), index.encode(documents), atol=1e-6)  # default: documents
    # the query side differs from the index model: it is the 2-layer student through its map
    assert not np.allclose(model.encode_query(QUERIES), index.encode(QUERIES), atol=1e-3)
    plain = SentenceTransformer(fitted.path, device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(plain.encode_query(QUERIES), shallow.encode(QUERIES), atol=1e-6)
    assert num_layers(query_side(model)) == 2


def test_result_records_dev_curve_and_choice(fitted):
    saved = read_result(fitted.path)
    assert saved["steps"] == 4 and saved["maps"] in ("trained", "refit")
    evals = [row for row in saved["log_history"] if "eval_corpus-dev_depth2_ndcg@10" in row]
    assert [row["step"] for row in evals] == [2, 4]
    assert 0.0 <= saved["dev"]["ndcg@10"] <= 1.0
    best = max(saved["dev_refit"]["ndcg@10"], evals[-1]["eval_corpus-dev_depth2_ndcg@10"])
    assert saved["dev"]["ndcg@10"] == pytest.approx(best)


def test_leap_init_keeps_the_stack_and_serves_the_depth(index_dir, corpus_path, tmp_path):
    result = fit_query_encoder(index_dir, corpus_path, tmp_path / "leap", init="leap", **SMALL)
    shallow = st_leap.load(result.student_path, device="cpu")
    assert num_layers(shallow) == 4 and shallow[0].truncate_layers == 2
    texts = ["a query about cells", "another one"]
    model = st_leap.load(result.path, device="cpu")
    np.testing.assert_allclose(model.encode_query(texts), shallow.encode(texts), atol=1e-6)
    cut = shallow.encode(texts, truncate_layers=2, exit_threshold=None)
    np.testing.assert_allclose(shallow.encode(texts), cut, atol=1e-6)
    full = shallow.encode(texts, truncate_layers=None, exit_threshold=None)
    assert not np.allclose(full, cut, atol=1e-4)  # the rest of the stack is there, trained at every depth
    trained = read_result(result.path)
    assert trained["config"]["retrieval"] == {"scale": 20.0}  # every depth


def test_exit_settings_on_a_router_model_are_refused(fitted):
    with pytest.raises(ValueError, match="routes queries and documents"):
        st_leap.from_pretrained(fitted.path, exit_threshold=0.9)


def test_resume_continues_a_stopped_run(index_dir, corpus_path, tmp_path):
    embeddings = SentenceTransformer(index_dir, device="cpu").encode(read_corpus(corpus_path).documents)
    ids = np.array(read_corpus(corpus_path).ids)
    np.savez(tmp_path / "index.npz", ids=ids[::-1], embeddings=embeddings[::-1])  # any order: matched by id
    common = dict(SMALL, document_embeddings=tmp_path / "index.npz", work_dir=tmp_path / "work")
    first = fit_query_encoder(index_dir, corpus_path, tmp_path / "model", stop_at_step=2, **common)
    assert first.steps == 2 and first.resumed_from is None
    second = fit_query_encoder(index_dir, corpus_path, tmp_path / "model", resume=True, **common)
    assert second.steps == 4
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-2")
    # the layers it started from are recorded on the resumed run too, which reuses the saved start
    assert first.layers is None and first.start_layers == second.start_layers == pick_layers(4, first.depth, "spread")
    assert read_result(second.path)["start_layers"] == second.start_layers
    # the training minutes are the whole schedule's: the stopped run's, then this one's
    assert first.earlier_train_seconds is None
    assert second.earlier_train_seconds == pytest.approx(first.train_seconds)
    assert second.train_seconds > first.train_seconds


def test_bad_inputs_fail_before_any_model_loads(tmp_path, corpus_path):
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b"}\n', encoding="utf-8")
    missing_model = str(tmp_path / "no-such-model")  # never loaded: the corpus is read first
    with pytest.raises(ValueError, match="line 2: missing text"):
        fit_query_encoder(missing_model, bad, tmp_path / "out")
    np.savez(tmp_path / "short.npz", ids=np.array(["doc0"]), embeddings=np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match="have no embedding"):
        fit_query_encoder(missing_model, corpus_path, tmp_path / "out", document_embeddings=tmp_path / "short.npz")
    with pytest.raises(ValueError, match="init"):
        fit_query_encoder(missing_model, corpus_path, tmp_path / "out", init="middle")


def test_a_short_budget_fits_the_maps_on_the_corpus(index_dir, corpus_path, tmp_path):
    """2 steps of 8 texts are 16 training texts, fewer than the map fit needs: the maps take their own ``map_texts``
    texts of the training documents."""
    assert 2 * 8 < MIN_FIT_TEXTS
    result = fit_query_encoder(index_dir, corpus_path, tmp_path / "short", **dict(SMALL, max_steps=2))
    assert result.steps == 2
    assert result.map_fit_texts == read_result(result.path)["map_fit_texts"] == SMALL["map_texts"]


def test_the_index_model_runs_once_over_the_training_texts(index_dir, corpus_path, tmp_path, monkeypatch):
    """The map texts and a shorter budget's training texts are one list and its prefix: the index model embeds
    the longer once, and training reads the prefix's labels from the shared cache instead of a second pass."""
    import st_leap.teacher as teacher_module
    import st_leap.training as training_module

    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "cache"))
    real = teacher_module.compute_teacher_embeddings
    passes = []

    def recorded(teacher, sentences, *args, return_info=False, **kwargs):
        array, info = real(teacher, sentences, *args, return_info=True, **kwargs)
        passes.append((len(sentences), info.reused))
        return (array, info) if return_info else array

    monkeypatch.setattr(teacher_module, "compute_teacher_embeddings", recorded)
    monkeypatch.setattr(training_module, "compute_teacher_embeddings", recorded)
    fit_query_encoder(index_dir, corpus_path, tmp_path / "once", **dict(SMALL, max_steps=2, eval_steps=None))
    run = [n for n, reused in passes if not reused]
    documents = len(read_corpus(corpus_path))
    assert sorted(run) == sorted([documents, SMALL["map_texts"]])  # the document pass and one pass over the texts
    assert (2 * 8, True) in passes  # training found its labels in the cache


def test_a_corpus_too_small_for_the_map_fit_is_refused_before_any_model_loads(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"_id": f"d{i}", "text": f"The dog number {i} runs in the park."} for i in range(4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    missing_model = str(tmp_path / "no-such-model")  # never loaded
    with pytest.raises(ValueError, match=f"map fit needs at least {MIN_FIT_TEXTS}"):
        fit_query_encoder(missing_model, path, tmp_path / "out", dev_documents=1, max_steps=2, batch_size=8)
    with pytest.raises(ValueError, match=f"map_texts must be an int >= {MIN_FIT_TEXTS}"):
        fit_query_encoder(missing_model, path, tmp_path / "out", map_texts=MIN_FIT_TEXTS - 1)


def test_empty_documents_stay_in_the_index_and_are_counted(index_dir, tmp_path, capsys):
    """A corpus with an empty document in the middle trains from the CLI: one warning, the document keeps its row
    of the index, the count is printed and recorded, and no training text comes from it."""
    from st_leap.cli import main
    from st_leap.training import TrainConfig, corpus_training_texts

    rows = [json.loads(line) for line in tiny_corpus(tmp_path / "full.jsonl").read_text().splitlines()]
    rows.insert(20, {"_id": "blank", "title": "", "text": "  "})
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    index = SentenceTransformer(index_dir, device="cpu")
    ids = [row["_id"] for row in rows]
    embeddings = index.encode([(row["title"] + " " + row["text"]).strip() for row in rows])
    np.savez(tmp_path / "index.npz", ids=np.array(ids[::-1]), embeddings=embeddings[::-1])
    out = tmp_path / "model"
    argv = ["fit-query-encoder", index_dir, "--corpus", str(path), "--out", str(out), "--depth", "2",
            "--max-steps", "4", "--batch-size", "8", "--eval-steps", "2", "--dev-documents", "8",
            "--document-embeddings", str(tmp_path / "index.npz")]
    with pytest.warns(UserWarning, match="empty title and text") as caught:
        assert main(argv) == 0
    (warning,) = [w for w in caught if "empty title and text" in str(w.message)]  # read often, said once
    assert "1 of 41 documents has" in str(warning.message) and "'blank'" in str(warning.message)
    assert "empty documents: 1" in capsys.readouterr().out
    saved = read_result(out)
    assert saved["empty_documents"] == 1
    corpus = read_corpus(path)
    assert corpus.ids == ids and corpus.empty == [20]
    texts, owners, _ = corpus_training_texts(TrainConfig.from_dict(saved["config"]))
    assert len(texts) == 32 and 20 not in owners
    # the empty document is in the index the model serves against: its document embedding is the index's row
    model = st_leap.load(str(out), device="cpu")
    np.testing.assert_allclose(model.encode_document([""]), embeddings[20:21], atol=1e-4)


def test_export_writes_the_query_side_as_one_graph(fitted, tmp_path):
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export

    model = st_leap.load(fitted.path, device="cpu")
    folder = export(model, tmp_path / "query-onnx", "onnx", depth=2)
    served = st_leap.load(str(folder))
    np.testing.assert_allclose(served.encode_query(QUERIES), model.encode_query(QUERIES), atol=1e-4)


def test_router_model_and_its_exported_query_graph_serve_in_the_multi_process_pool(fitted, tmp_path):
    """The saved model (both routes) and the one-graph export of its query side encode in sentence-transformers'
    multi-process pool as they do in-process (each worker reopens the graph from its folder)."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export

    model = st_leap.load(fitted.path, device="cpu")
    served = st_leap.load(str(export(model, tmp_path / "query-onnx", "onnx", depth=2)))
    texts = QUERIES * 3
    for encoder, calls in ((model, ("encode_query", "encode_document")), (served, ("encode_query",))):
        pool = encoder.start_multi_process_pool(["cpu", "cpu"])
        try:
            for call in calls:
                pooled = getattr(encoder, call)(texts, pool=pool, batch_size=2)
                np.testing.assert_allclose(pooled, getattr(encoder, call)(texts, batch_size=2), atol=1e-5)
        finally:
            encoder.stop_multi_process_pool(pool)


@pytest.fixture(scope="module")
def narrow_student_dir(tmp_path_factory) -> str:
    """A smaller model than the index model: 3 layers, 16 wide (the index model is 4 x 32)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("qe_student"), "bert", num_layers=3, seed=3, hidden=16)


@pytest.fixture(scope="module")
def cross_fitted(index_dir, corpus_path, narrow_student_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qe_cross") / "model"
    return fit_query_encoder(index_dir, corpus_path, out, student=narrow_student_dir, **SMALL)


def test_a_smaller_student_serves_queries_in_the_index_models_space(cross_fitted, index_dir, narrow_student_dir, corpus_path):
    """A 16-wide student for a 32-wide index: its 2 layers (spread: the student's layers 1 and 3) map into the
    index's 32 dimensions; the Router's documents (and plain encode) are the index model exactly; it reloads."""
    from st_leap.exit_maps import ExitMaps

    model = st_leap.load(cross_fitted.path, device="cpu")
    queries = model.encode_query(QUERIES)
    documents = read_corpus(corpus_path).documents[:5]
    index = SentenceTransformer(index_dir, device="cpu")
    assert queries.shape == (len(QUERIES), 32) and model.encode_document(documents).shape == (5, 32)
    np.testing.assert_allclose(model.encode_document(documents), index.encode(documents), atol=1e-6)
    np.testing.assert_allclose(model.encode(documents), index.encode(documents), atol=1e-6)
    shallow = query_side(model)
    assert num_layers(shallow) == 2 and shallow[0].auto_model.config.hidden_size == 16
    maps = next(m for m in shallow if isinstance(m, ExitMaps))
    assert (maps.in_features, maps.out_features) == (16, 32)
    assert cross_fitted.student == narrow_student_dir and read_result(cross_fitted.path)["student"] == narrow_student_dir
    # the student's own layers, not the index model's: its first layer is the narrow model's first layer
    source = SentenceTransformer(narrow_student_dir, device="cpu")
    assert encoder_layers(shallow[0].auto_model)[0].attention.self.query.weight.shape == (16, 16)
    assert encoder_layers(source[0].auto_model)[0].attention.self.query.weight.shape == (16, 16)
    # queries are meaningful in the index space: cosine to the index model's own query embedding beats chance
    cos = torch.nn.functional.cosine_similarity(torch.as_tensor(queries), torch.as_tensor(index.encode(QUERIES)))
    assert float(cos.mean()) > 0.5


def test_a_smaller_student_resumes_and_exports_both_routes(index_dir, corpus_path, narrow_student_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export

    common = dict(SMALL, student=narrow_student_dir, work_dir=tmp_path / "work")
    first = fit_query_encoder(index_dir, corpus_path, tmp_path / "model", stop_at_step=2, **common)
    second = fit_query_encoder(index_dir, corpus_path, tmp_path / "model", resume=True, **common)
    assert (first.steps, second.steps) == (2, 4) and second.resumed_from.endswith("checkpoint-2")
    model = st_leap.load(second.path, device="cpu")
    served = st_leap.load(str(export(model, tmp_path / "onnx", "onnx")))
    np.testing.assert_allclose(served.encode_query(QUERIES), model.encode_query(QUERIES), atol=1e-4)
    documents = read_corpus(corpus_path).documents[:5]
    np.testing.assert_allclose(served.encode_document(documents), model.encode_document(documents), atol=1e-4)


def test_fit_query_encoder_levers_default_to_todays_config():
    """With every lever at its default the student's ``loss`` and ``retrieval`` settings are today's dicts exactly
    (same datasets, same losses); a weight scales its loss, 0 drops its dataset, and only levers that differ
    from their defaults are written."""
    from st_leap.losses.leap import LEAPSettings
    from st_leap.query_encoder import LEAP_STUDENT_LOSS, STUDENT_LOSS, retrieval_settings, student_loss

    assert student_loss(False) == STUDENT_LOSS and student_loss(True) == LEAP_STUDENT_LOSS
    assert retrieval_settings(False, 3) == {"layers": [3], "scale": 20.0}
    assert retrieval_settings(True, 3) == {"scale": 20.0}
    doubled = student_loss(False, 2.0)
    assert (doubled["final_weight"], doubled["contrastive_weight"]) == (2.0, 2.0)
    assert {k: v for k, v in doubled.items() if k not in ("final_weight", "contrastive_weight")} == {
        k: v for k, v in STUDENT_LOSS.items() if k not in ("final_weight", "contrastive_weight")}
    recipe, half = LEAPSettings(), student_loss(True, 0.5)  # "leap": every term of the recipe, halved
    for term in ("final", "exit", "contrastive", "anchor", "adjacent"):
        assert half[f"{term}_weight"] == 0.5 * getattr(recipe, f"{term}_weight")
    assert "student_weight" not in half  # a mixing weight, not a term: untouched
    assert retrieval_settings(False, 3, retrieval_weight=0.0) is None  # distillation alone
    assert retrieval_settings(False, 3, distill_weight=0.0) == {"layers": [3], "scale": 20.0, "distill": False}
    assert retrieval_settings(False, 3, retrieval_weight=2.0, hard_negatives=4, negatives_from="document",
                              soft_weight=0.5) == {
        "layers": [3], "scale": 20.0, "weight": 2.0, "hard_negatives": 4, "negatives_from": "document",
        "soft_weight": 0.5, "soft_scale": 20.0}


def test_fit_query_encoder_bad_levers_fail_before_any_model_loads(tmp_path, corpus_path):
    missing_model = str(tmp_path / "no-such-model")  # never loaded
    log = tmp_path / "log.txt"
    log.write_text("a past query\n", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n\n", encoding="utf-8")
    for kwargs, match in [
        ({"distill_weight": 0, "retrieval_weight": 0}, "both 0"),
        ({"distill_weight": -1.0}, "distill_weight must be a finite number >= 0"),
        ({"kinds": ["title", "question"]}, "kinds must be a non-empty list of title, sentence, span"),
        ({"kinds": []}, "kinds must be"),
        ({"hard_negatives": 2, "negatives_from": "passage"}, "negatives_from must be one of"),
        ({"hard_negatives": 3, "negatives_pool": 2}, "negatives_pool must be an int >= 3"),
        ({"soft_weight": -0.5}, "soft_weight"),
        ({"query_fraction": 0.3}, "query_fraction needs queries"),
        ({"queries": log, "distill_weight": 0}, "distillation loss"),
        ({"queries": log, "query_fraction": 1.5}, "query_fraction must be a number in"),
        ({"queries": tmp_path / "blank.txt"}, "no query in the file"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit_query_encoder(missing_model, corpus_path, tmp_path / "out", **kwargs)


def test_fit_query_encoder_trains_on_retrieval_alone_with_hard_negatives_and_soft_targets(index_dir, corpus_path,
                                                                                          tmp_path):
    """The levers run end to end through the one training path (mined negatives and soft targets as (B, R, D)
    labels, the distillation dataset dropped, sentences only) and are recorded in the config beside the model."""
    result = fit_query_encoder(
        index_dir, corpus_path, tmp_path / "levers", **dict(SMALL, max_steps=2, eval_steps=None),
        distill_weight=0.0, hard_negatives=2, negatives_skip=1, negatives_pool=4, soft_weight=0.5,
        kinds=["sentence"],
    )
    assert result.steps == 2
    config = read_result(result.path)["config"]
    assert config["retrieval"] == {"layers": [2], "scale": 20.0, "distill": False, "hard_negatives": 2,
                                   "negatives_from": "query", "negatives_skip": 1, "negatives_pool": 4,
                                   "soft_weight": 0.5, "soft_scale": 20.0}
    assert config["corpus"]["kinds"] == ["sentence"]


def test_the_default_budget_follows_the_index_models_width(index_dir, tmp_path):
    """A narrow index model gets DEFAULT_STEPS on the step budget's worth of texts, one 768 wide or more
    WIDE_INDEX_STEPS on WIDE_INDEX_TEXT_STEPS steps' worth (read from its config alone, DistilBERT's ``dim`` too); a
    folder without a readable config gets the default."""
    from transformers import BertConfig, DistilBertConfig

    from st_leap.query_encoder import (
        DEFAULT_STEPS,
        WIDE_INDEX_HIDDEN,
        WIDE_INDEX_STEPS,
        WIDE_INDEX_TEXT_STEPS,
        default_max_steps,
        default_train_texts,
    )

    assert WIDE_INDEX_TEXT_STEPS < WIDE_INDEX_STEPS  # a wide index's texts repeat within its schedule
    assert default_max_steps(index_dir) == DEFAULT_STEPS
    assert default_train_texts(index_dir, DEFAULT_STEPS, 64) is None  # the step budget's worth
    BertConfig(hidden_size=WIDE_INDEX_HIDDEN, num_attention_heads=12).save_pretrained(tmp_path / "wide")
    assert default_max_steps(str(tmp_path / "wide")) == WIDE_INDEX_STEPS
    assert default_train_texts(str(tmp_path / "wide"), WIDE_INDEX_STEPS, 64) == WIDE_INDEX_TEXT_STEPS * 64
    assert default_train_texts(str(tmp_path / "wide"), 10, 8) == 80  # a shorter schedule: its own worth
    DistilBertConfig(dim=WIDE_INDEX_HIDDEN).save_pretrained(tmp_path / "distil")
    assert default_max_steps(str(tmp_path / "distil")) == WIDE_INDEX_STEPS
    BertConfig(hidden_size=WIDE_INDEX_HIDDEN - 128, num_attention_heads=8).save_pretrained(tmp_path / "narrower")
    assert default_max_steps(str(tmp_path / "narrower")) == DEFAULT_STEPS
    (tmp_path / "empty").mkdir()
    assert default_max_steps(str(tmp_path / "empty")) == DEFAULT_STEPS


def test_past_queries_train_as_a_third_dataset_through_the_distillation_loss(index_dir, corpus_path, tmp_path,
                                                                            monkeypatch):
    """``queries`` (a log of past queries, no labels) adds a dataset of those queries, labelled with the index
    model's embedding of each, filling ``query_fraction`` of the rows the Trainer draws from; it goes through the
    distillation loss (the same object as the corpus texts'), is recorded in the config, and moves the model."""
    from st_leap import training
    from st_leap.training import QUERY_FRACTION

    log = tmp_path / "log.txt"
    log.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    seen = {}
    real = training._train_with_trainer

    def spy(model, loss, dataset, config, *args, **kwargs):
        seen["dataset"], seen["loss"], seen["retrieval_loss"] = dataset, loss, args[-1] if args else None
        return real(model, loss, dataset, config, *args, **kwargs)

    monkeypatch.setattr(training, "_train_with_trainer", spy)
    small = dict(SMALL, max_steps=2, eval_steps=None)
    result = fit_query_encoder(index_dir, corpus_path, tmp_path / "with_log", **small, queries=log)
    dataset = seen["dataset"]
    assert set(dataset) == {"distill", "retrieval", "queries"}
    queries = dataset["queries"]
    others = len(dataset["distill"]) + len(dataset["retrieval"])
    assert len(queries) == round(QUERY_FRACTION / (1 - QUERY_FRACTION) * others)  # the default share of the rows
    assert set(queries["sentence"]) == set(QUERIES)
    index = SentenceTransformer(index_dir, device="cpu")
    index.max_seq_length = SMALL.get("max_seq_length", 64)
    first = queries[0]
    np.testing.assert_allclose(first["label"], index.encode(first["sentence"]), atol=1e-5)
    config = read_result(result.path)["config"]
    assert (config["corpus"]["queries"], config["corpus"]["query_fraction"]) == (str(log), QUERY_FRACTION)  # recorded
    without = fit_query_encoder(index_dir, corpus_path, tmp_path / "without_log", **small)
    assert set(seen["dataset"]) == {"distill", "retrieval"} and "queries" not in read_result(without.path)["config"]["corpus"]
    with_log = query_side(st_leap.load(result.path, device="cpu")).encode(QUERIES)
    plain = query_side(st_leap.load(without.path, device="cpu")).encode(QUERIES)
    assert not np.allclose(with_log, plain, atol=1e-6)


def test_query_log_texts_fill_the_fraction_in_seeded_cycles(tmp_path):
    from st_leap.training import QUERY_FRACTION, TrainConfig, query_log_texts

    log = tmp_path / "log.txt"
    log.write_text("a\nb\nc\n", encoding="utf-8")
    corpus = {"path": "x", "queries": str(log)}
    config = TrainConfig(teacher="t", batch_size=2, corpus=corpus)
    texts = query_log_texts(config, other_rows=300)
    assert len(texts) == round(QUERY_FRACTION / (1 - QUERY_FRACTION) * 300)
    assert all(sorted(texts[i:i + 3]) == ["a", "b", "c"] for i in range(0, len(texts) - 2, 3))  # every query a cycle
    assert texts == query_log_texts(config, other_rows=300)
    assert query_log_texts(TrainConfig(teacher="t", corpus={"path": "x"}), other_rows=300) == []
    assert len(query_log_texts(TrainConfig(teacher="t", batch_size=2, corpus={**corpus, "query_fraction": 0.2}), 400)) == 100
    for bad, match in [({"query_fraction": 1.0}, "query_fraction must be a number in"),
                       ({"query_fraction": 0}, "query_fraction must be a number in")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(teacher="t", corpus={**corpus, **bad})
    with pytest.raises(ValueError, match="query_fraction needs corpus queries"):
        TrainConfig(teacher="t", corpus={"path": "x", "query_fraction": 0.3})
    with pytest.raises(ValueError, match="distillation loss"):
        TrainConfig(teacher="t", corpus=corpus, retrieval={"distill": False})
    with pytest.raises(ValueError, match="api='trainer'"):
        TrainConfig(teacher="t", corpus=corpus, api="fit", group_by_length=False)


def test_a_run_with_past_queries_resumes_to_the_uninterrupted_model(index_dir, corpus_path, tmp_path):
    """Stopped and resumed, a run with a query log ends where the uninterrupted run does: the third dataset and its
    order are rebuilt the same from the config."""
    log = tmp_path / "log.txt"
    log.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    common = dict(SMALL, eval_steps=None, queries=log)
    whole = fit_query_encoder(index_dir, corpus_path, tmp_path / "whole", **common)
    fit_query_encoder(index_dir, corpus_path, tmp_path / "parts", stop_at_step=2, **common)
    resumed = fit_query_encoder(index_dir, corpus_path, tmp_path / "parts", resume=True, **common)
    assert (whole.steps, resumed.steps) == (4, 4) and resumed.resumed_from.endswith("checkpoint-2")
    encode = lambda path: query_side(st_leap.load(path, device="cpu")).encode(QUERIES)  # noqa: E731
    np.testing.assert_allclose(encode(resumed.path), encode(whole.path), atol=1e-5)


def test_train_texts_caps_the_texts_and_the_schedule_repeats_them(index_dir, corpus_path, tmp_path, monkeypatch):
    """``train_texts`` fewer than the budget's worth: the datasets hold that many texts, the run still takes every
    step of its schedule (the texts repeat in epochs), and the cap is recorded; a wide index model gets its capped
    texts by default; fewer than a batch is refused before any model loads."""
    import st_leap.training as training

    seen = {}
    real = training._train_with_trainer

    def spy(model, loss, dataset, config, *args, **kwargs):
        seen["dataset"] = dataset
        return real(model, loss, dataset, config, *args, **kwargs)

    monkeypatch.setattr(training, "_train_with_trainer", spy)
    small = dict(SMALL, max_steps=6, eval_steps=None)  # the budget's worth: 6 x 8 = 48 texts
    result = fit_query_encoder(index_dir, corpus_path, tmp_path / "capped", train_texts=16, **small)
    assert result.steps == 6
    assert {name: len(rows) for name, rows in seen["dataset"].items()} == {"distill": 16, "retrieval": 16}
    assert read_result(result.path)["config"]["num_sentences"] == 16
    uncapped = fit_query_encoder(index_dir, corpus_path, tmp_path / "uncapped", **small)
    assert len(seen["dataset"]["distill"]) == 48 and read_result(uncapped.path)["config"]["num_sentences"] is None
    import st_leap.query_encoder as query_encoder

    monkeypatch.setattr(query_encoder, "WIDE_INDEX_HIDDEN", 1)  # the tiny index model counts as wide: by default
    monkeypatch.setattr(query_encoder, "WIDE_INDEX_TEXT_STEPS", 2)  # its run gets 2 steps' worth of texts
    wide = fit_query_encoder(index_dir, corpus_path, tmp_path / "wide", **small)
    assert wide.steps == 6 and len(seen["dataset"]["distill"]) == 16
    assert read_result(wide.path)["config"]["num_sentences"] == 16
    for bad in (4, 0, 2.5, True):
        with pytest.raises(ValueError, match="train_texts must be"):
            fit_query_encoder(str(tmp_path / "no-such-model"), corpus_path, tmp_path / "bad", train_texts=bad, **small)


def test_train_seed_changes_the_training_not_the_texts_or_the_dev_split(index_dir, corpus_path, tmp_path, monkeypatch):
    """Two runs that differ only in ``train_seed`` train on the same texts, are scored on the same dev split (the
    data seed's), record their training seeds, and end as different encoders; the same training seed twice ends as
    the same encoder."""
    import st_leap.training as training

    seen = []
    real = training._train_with_trainer

    def spy(model, loss, dataset, config, *args, **kwargs):
        seen.append({name: sorted(rows["sentence"]) for name, rows in dataset.items()})
        return real(model, loss, dataset, config, *args, **kwargs)

    monkeypatch.setattr(training, "_train_with_trainer", spy)
    small = dict(SMALL, eval_steps=None)
    runs = {seed: fit_query_encoder(index_dir, corpus_path, tmp_path / f"seed{seed}", train_seed=seed, **small)
            for seed in (42, 7)}
    again = fit_query_encoder(index_dir, corpus_path, tmp_path / "seed7again", train_seed=7, **small)
    assert seen[0] == seen[1] == seen[2]  # the same training texts
    assert [read_result(runs[s].path)["config"]["seed"] for s in (42, 7)] == [42, 7]
    assert runs[42].dev["reference_ndcg@10"] == runs[7].dev["reference_ndcg@10"]  # the same dev split
    encode = lambda path: query_side(st_leap.load(path, device="cpu")).encode(QUERIES)  # noqa: E731
    assert np.abs(encode(runs[42].path) - encode(runs[7].path)).max() > 1e-4
    np.testing.assert_allclose(encode(again.path), encode(runs[7].path), atol=1e-5)
