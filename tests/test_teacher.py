from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

from st_leap.teacher import CacheMismatchError, compute_teacher_embeddings, dataset_fingerprint, teacher_dataset
from tests.conftest import build_tiny_model_dir


def _tiny(path, seed: int) -> SentenceTransformer:
    transformer = Transformer(build_tiny_model_dir(path, num_layers=3, seed=seed), max_seq_length=16)
    return SentenceTransformer(modules=[transformer, Pooling(32)], device="cpu")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("t1"), 0), _tiny(tmp_path_factory.mktemp("t2"), 1)


SENTENCES = ["a man is eating food", "the dog is playing", "a woman on a red ball", "cat in the park", "blue guitar"]


def test_compute_teacher_embeddings_match_encode_and_cache_reloads(teachers, tmp_path, monkeypatch):
    """The cached final embeddings equal teacher.encode, and a second call reads the cache (the same array, and
    the teacher is not run again)."""
    teacher = teachers[0]
    first = compute_teacher_embeddings(teacher, SENTENCES, tmp_path, batch_size=2, show_progress_bar=False)
    np.testing.assert_allclose(first, teacher.encode(SENTENCES, convert_to_numpy=True), atol=1e-5)
    assert (tmp_path / "embeddings.npy").exists() and (tmp_path / "meta.json").exists()

    def never(*args, **kwargs):
        raise AssertionError("the teacher ran although the cache holds its embeddings")

    monkeypatch.setattr(teacher, "preprocess", never)
    again = compute_teacher_embeddings(teacher, SENTENCES, tmp_path, show_progress_bar=False)
    np.testing.assert_array_equal(again, first)


def test_compute_teacher_embeddings_per_layer(teachers):
    """With layers=[...] row 0 is the final embedding and row 1+i the masked mean of hidden_states[layers[i]]."""
    teacher = teachers[0]
    out = compute_teacher_embeddings(teacher, SENTENCES, None, layers=[1, 3], show_progress_bar=False)
    assert out.shape == (5, 3, 32)
    np.testing.assert_allclose(out[:, 0], out[:, 2], atol=1e-5)  # mean pooling of the last layer = final
    assert not np.allclose(out[:, 1], out[:, 2], atol=1e-3)
    assert teacher[0].auto_model.config.output_hidden_states is False  # restored


def test_compute_teacher_embeddings_refuses_other_teacher_or_dataset(teachers, tmp_path):
    """A cache made by one teacher/dataset/layer set is refused for another, with an error naming what differs."""
    compute_teacher_embeddings(teachers[0], SENTENCES, tmp_path, show_progress_bar=False)
    with pytest.raises(CacheMismatchError, match="different teacher"):
        compute_teacher_embeddings(teachers[1], SENTENCES, tmp_path, show_progress_bar=False)
    with pytest.raises(CacheMismatchError, match="different dataset"):
        compute_teacher_embeddings(teachers[0], SENTENCES[::-1], tmp_path, show_progress_bar=False)
    with pytest.raises(CacheMismatchError, match="different layer set"):
        compute_teacher_embeddings(teachers[0], SENTENCES, tmp_path, layers=[2], show_progress_bar=False)
    with pytest.raises(ValueError, match=r"layers must be ints in 1..3, got \[4\]"):
        compute_teacher_embeddings(teachers[0], SENTENCES, None, layers=[4], show_progress_bar=False)


def test_dataset_fingerprint_is_order_and_boundary_sensitive():
    """The dataset fingerprint changes with order and with where one sentence ends and the next begins."""
    assert dataset_fingerprint(["ab", "c"]) != dataset_fingerprint(["a", "bc"])
    assert dataset_fingerprint(["a", "b"]) != dataset_fingerprint(["b", "a"])
    assert dataset_fingerprint(["a", "b"]) == dataset_fingerprint(["a", "b"])


def test_teacher_dataset_has_label_column(teachers):
    """teacher_dataset pairs each sentence with its embedding in a 'label' column (what LEAPLoss reads)."""
    emb = compute_teacher_embeddings(teachers[0], SENTENCES, None, show_progress_bar=False)
    ds = teacher_dataset(SENTENCES, emb)
    assert ds.column_names == ["sentence", "label"]
    np.testing.assert_allclose(np.array(ds[1]["label"]), emb[1], atol=1e-6)
    with pytest.raises(ValueError, match="same length, got 4 and 5"):
        teacher_dataset(SENTENCES[:4], emb)


def test_teacher_cache_is_checked_against_its_metadata(teachers, tmp_path):
    """The cache records shape, dtype and checksum; an array that no longer matches them (a truncated or replaced
    file) is refused with an error that names the file and says how to rebuild, and no temporary file is left."""
    teacher = teachers[0]
    cache = tmp_path / "cache"
    good = compute_teacher_embeddings(teacher, SENTENCES, cache, show_progress_bar=False)
    assert sorted(p.name for p in cache.iterdir()) == ["embeddings.npy", "meta.json"]
    np.save(cache / "embeddings.npy", good[:3])
    with pytest.raises(CacheMismatchError, match=r"embeddings\.npy.*shape.*Delete"):
        compute_teacher_embeddings(teacher, SENTENCES, cache, show_progress_bar=False)
    (cache / "embeddings.npy").write_bytes(b"not an array")
    with pytest.raises(CacheMismatchError, match="cannot be read"):
        compute_teacher_embeddings(teacher, SENTENCES, cache, show_progress_bar=False)


def test_shared_cache_is_content_keyed_and_reused(teachers, tmp_path, monkeypatch):
    """shared_cache=True caches in <$ST_LEAP_CACHE>/teacher/<key>/: the same teacher, sentences and layers find
    the same folder and load it (the teacher does not run again); another teacher, sentence list or layer set gets
    a folder of its own instead of a mismatch error."""
    from st_leap.teacher import cache_key

    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "root"))
    teacher = teachers[0]
    first, info = compute_teacher_embeddings(teacher, SENTENCES, shared_cache=True, return_info=True,
                                             show_progress_bar=False)
    assert not info.reused and info.path.parent == tmp_path / "root" / "teacher"
    assert len(info.path.name) == 16 and sorted(p.name for p in info.path.iterdir()) == ["embeddings.npy", "meta.json"]
    meta = json.loads((info.path / "meta.json").read_text())
    assert meta["key"] == info.path.name == cache_key(meta)
    assert meta["max_seq_length"] == 16 and meta["num_sentences"] == 5

    original = teacher.preprocess

    def never(*args, **kwargs):
        raise AssertionError("the teacher ran although the shared cache holds its embeddings")

    monkeypatch.setattr(teacher, "preprocess", never)
    again, info_again = compute_teacher_embeddings(teacher, SENTENCES, shared_cache=True, return_info=True,
                                                   show_progress_bar=False)
    assert info_again == type(info)(info.path, True)
    np.testing.assert_array_equal(again, first)
    monkeypatch.setattr(teacher, "preprocess", original)

    folders = {info.path}
    for other_teacher, sentences, layers in [(teachers[1], SENTENCES, None), (teacher, SENTENCES[::-1], None),
                                             (teacher, SENTENCES, [2])]:
        _, other = compute_teacher_embeddings(other_teacher, sentences, layers=layers, shared_cache=True,
                                              return_info=True, show_progress_bar=False)
        assert not other.reused and other.path not in folders
        folders.add(other.path)
    assert len(list((tmp_path / "root" / "teacher").iterdir())) == 4
    # max_seq_length changes the array, so it changes the key too
    teacher.max_seq_length = 8
    try:
        _, shorter = compute_teacher_embeddings(teacher, SENTENCES, shared_cache=True, return_info=True,
                                                show_progress_bar=False)
    finally:
        teacher.max_seq_length = 16
    assert shorter.path not in folders
    with pytest.raises(ValueError, match="either cache_dir or shared_cache"):
        compute_teacher_embeddings(teacher, SENTENCES, tmp_path / "named", shared_cache=True)


def test_cache_root_follows_ST_LEAP_CACHE_then_XDG_CACHE_HOME_then_home(tmp_path, monkeypatch):
    """The shared cache root is $ST_LEAP_CACHE, else $XDG_CACHE_HOME/st_leap, else ~/.cache/st_leap."""
    from st_leap.teacher import shared_cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ST_LEAP_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert shared_cache_root() == tmp_path / "home" / ".cache" / "st_leap" / "teacher"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert shared_cache_root() == tmp_path / "xdg" / "st_leap" / "teacher"
    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "mine"))
    assert shared_cache_root() == tmp_path / "mine" / "teacher"


def test_a_stopped_pass_resumes_where_it_stopped(teachers, tmp_path, monkeypatch):
    """A pass into a cache folder that is stopped keeps the rows it has done (partial.npy + partial.json); the next
    pass over the same inputs runs the teacher on the remaining sentences only, and the result equals one whole
    pass; the partial files are gone once the cache is written."""
    import st_leap.teacher as teacher_module

    teacher = teachers[0]
    whole = compute_teacher_embeddings(teacher, SENTENCES, None, batch_size=2, show_progress_bar=False)
    monkeypatch.setattr(teacher_module, "PARTIAL_SAVE_SECONDS", 0.0)  # save after every batch
    original, calls = teacher.preprocess, []

    def stop_on_third(batch, *args, **kwargs):
        calls.append(list(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(teacher, "preprocess", stop_on_third)
    with pytest.raises(KeyboardInterrupt):
        compute_teacher_embeddings(teacher, SENTENCES, tmp_path, batch_size=2, show_progress_bar=False)
    assert not (tmp_path / "embeddings.npy").exists()
    assert json.loads((tmp_path / "partial.json").read_text())["rows"] == 4

    calls.clear()
    monkeypatch.setattr(teacher, "preprocess", lambda batch, *a, **k: calls.append(list(batch)) or original(batch, *a, **k))
    resumed = compute_teacher_embeddings(teacher, SENTENCES, tmp_path, batch_size=2, show_progress_bar=False)
    assert sum(len(b) for b in calls) == 1  # only the fifth sentence ran
    np.testing.assert_allclose(resumed, whole, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.npy", "meta.json"]


def test_a_partial_pass_of_other_inputs_or_a_damaged_one_is_not_reused(teachers, tmp_path, monkeypatch):
    """A partial pass is only resumed by a pass over the same inputs (its cache key); a partial.npy that does not
    match its partial.json is discarded and the pass starts over."""
    import st_leap.teacher as teacher_module

    teacher = teachers[0]
    monkeypatch.setattr(teacher_module, "PARTIAL_SAVE_SECONDS", 0.0)
    original = teacher.preprocess
    state = {"n": 0}

    def stop_on_second(batch, *args, **kwargs):
        state["n"] += 1
        if state["n"] == 2:
            raise KeyboardInterrupt
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(teacher, "preprocess", stop_on_second)
    with pytest.raises(KeyboardInterrupt):
        compute_teacher_embeddings(teacher, SENTENCES, tmp_path, batch_size=2, show_progress_bar=False)
    monkeypatch.setattr(teacher, "preprocess", original)
    np.save(tmp_path / "partial.npy", np.ones((2, 32), np.float32))  # rows that its partial.json does not vouch for
    fresh = compute_teacher_embeddings(teacher, SENTENCES, tmp_path, batch_size=2, show_progress_bar=False)
    np.testing.assert_allclose(fresh, teacher.encode(SENTENCES, convert_to_numpy=True), atol=1e-5)

    other = tmp_path / "other"
    monkeypatch.setattr(teacher, "preprocess", stop_on_second)
    state["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        compute_teacher_embeddings(teacher, ["a much longer sentence about something else entirely"] + SENTENCES[1:],
                                   other, batch_size=2, show_progress_bar=False)
    monkeypatch.setattr(teacher, "preprocess", original)
    (other / "meta.json").unlink(missing_ok=True)
    out = compute_teacher_embeddings(teacher, SENTENCES, other, batch_size=2, show_progress_bar=False)
    np.testing.assert_allclose(out, teacher.encode(SENTENCES, convert_to_numpy=True), atol=1e-5)


def test_write_shared_cache_serves_a_later_pass(teachers, tmp_path, monkeypatch):
    """write_shared_cache stores an array under the key a later shared-cache pass over the same sentences finds (the
    teacher does not run), and refuses an array of the wrong shape."""
    from st_leap.teacher import write_shared_cache

    monkeypatch.setenv("ST_LEAP_CACHE", str(tmp_path / "root"))
    teacher = teachers[0]
    longer = compute_teacher_embeddings(teacher, SENTENCES, None, show_progress_bar=False)
    folder = write_shared_cache(teacher, SENTENCES[:3], longer[:3])
    monkeypatch.setattr(teacher, "preprocess", lambda *a, **k: pytest.fail("the teacher ran"))
    again, info = compute_teacher_embeddings(teacher, SENTENCES[:3], shared_cache=True, return_info=True,
                                             show_progress_bar=False)
    assert info.reused and info.path == folder
    np.testing.assert_array_equal(again, longer[:3])
    with pytest.raises(ValueError, match="shape"):
        write_shared_cache(teacher, SENTENCES, longer[:3])
