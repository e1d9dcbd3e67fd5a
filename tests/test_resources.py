from __future__ import annotations

import gzip

import pytest

from st_leap import resources
from st_leap.training import TrainConfig


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    """A data folder whose more_sentences file has 30 numbered lines, with two 'article' sources in it."""
    (tmp_path / "stsb").mkdir()
    (tmp_path / "nli").mkdir()
    with gzip.open(tmp_path / "nli" / "more_sentences.txt.gz", "wt", encoding="utf-8") as f:
        f.write("".join(f"s{i}\n" for i in range(1, 31)))
    monkeypatch.setenv("ST_LEAP_DATA", str(tmp_path))
    monkeypatch.setattr(resources, "PASSAGE_SOURCES", {"a": (3, 12), "b": (20, 26)})
    return tmp_path


def test_load_passages_joins_runs_of_consecutive_lines_within_one_source(fake_data):
    """Each passage is sentences_per_passage consecutive lines of one source range: no line outside the ranges,
    no run across two sources, no line used twice; the order is shuffled by seed."""
    passages = resources.load_passages(sentences_per_passage=3)
    # source a: lines 3-12 -> runs 3-5, 6-8, 9-11 (12 left over); source b: lines 20-26 -> 20-22, 23-25
    expected = {"s3 s4 s5", "s6 s7 s8", "s9 s10 s11", "s20 s21 s22", "s23 s24 s25"}
    assert sorted(passages) == sorted(expected)
    assert resources.load_passages(sentences_per_passage=3, seed=1) == resources.load_passages(
        sentences_per_passage=3, seed=1
    )
    assert resources.load_passages(sentences_per_passage=3, seed=1) != resources.load_passages(
        sentences_per_passage=3, seed=2
    )
    assert len(resources.load_passages(4, sentences_per_passage=3)) == 4


def test_cloze_retrieval_dev_is_held_out_and_never_matches_word_for_word(fake_data):
    """The dev documents are the last passages of the seed's order (training takes the first ones); each query is
    a sentence of its document, taken out of it; bad sizes are a ValueError."""
    queries, corpus, relevant = resources.cloze_retrieval_dev(2, 3, seed=5, sentences_per_passage=3)
    passages = resources.load_passages(sentences_per_passage=3, seed=5)  # 5 passages in this data
    training = set(passages[:2])
    assert len(queries) == 2 and len(corpus) == 3 and all(len(docs) == 1 for docs in relevant.values())
    full = {doc_id: text for doc_id, text in corpus.items() if doc_id not in {d for s in relevant.values() for d in s}}
    assert set(full.values()) <= set(passages[2:]) and not set(corpus.values()) & training
    for query_id, query in queries.items():
        (doc_id,) = relevant[query_id]
        source = next(p for p in passages[2:] if query in p.split())
        assert query not in corpus[doc_id].split() and sorted(corpus[doc_id].split() + [query]) == sorted(source.split())
    assert resources.cloze_retrieval_dev(2, 3, seed=5, sentences_per_passage=3) == (queries, corpus, relevant)
    with pytest.raises(ValueError, match="only 5 passages"):
        resources.cloze_retrieval_dev(2, 6, sentences_per_passage=3)
    with pytest.raises(ValueError, match="num_queries <= num_documents"):
        resources.cloze_retrieval_dev(4, 3, sentences_per_passage=3)
    with pytest.raises(ValueError, match="sentences_per_passage >= 2"):
        resources.cloze_retrieval_dev(1, 3, sentences_per_passage=1)


def test_load_passages_rejects_bad_input(fake_data, monkeypatch):
    with pytest.raises(ValueError, match="sentences_per_passage must be an int >= 1, got 0"):
        resources.load_passages(sentences_per_passage=0)
    with pytest.raises(ValueError, match="Asked for 9 passages, only 5 can be built"):
        resources.load_passages(9, sentences_per_passage=3)
    monkeypatch.setattr(resources, "PASSAGE_SOURCES", {"a": (3, 40)})
    with pytest.raises(ValueError, match="has 30 lines, fewer than the 40"):
        resources.load_passages()


def test_passage_sources_fit_the_shared_file():
    """The line ranges in PASSAGE_SOURCES end inside the real more_sentences file (SOURCES.md layout)."""
    try:
        path = resources.data_dir() / "nli" / "more_sentences.txt.gz"
    except FileNotFoundError:
        pytest.skip("no shared data folder")
    if not path.exists():
        pytest.skip("no more_sentences.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        num_lines = sum(1 for _ in f)
    assert max(end for _, end in resources.PASSAGE_SOURCES.values()) <= num_lines
    passages = resources.load_passages(50)
    assert len(passages) == 50
    assert all(len(p.split()) > 40 for p in passages)  # paragraphs, not single sentences


def test_TrainConfig_rejects_unknown_data_kind():
    with pytest.raises(ValueError, match="data must be 'sentences', 'passages', 'mixed' or 'queries', got 'docs'"):
        TrainConfig(data="docs")
    with pytest.raises(ValueError, match="passage_fraction must be a number in"):
        TrainConfig(data="mixed", passage_fraction=1.5)


def test_mixed_training_texts_hold_the_fraction_of_passages_shuffled(fake_data, monkeypatch):
    """data='mixed': passage_fraction of the texts are passages, the rest sentences, shuffled together, the same
    for the same seed."""
    from st_leap.training import training_texts

    monkeypatch.setattr(resources, "load_sentences", lambda n, seed=0: [f"sentence {i}" for i in range(n)])
    config = TrainConfig(data="mixed", num_sentences=8, passage_fraction=0.5, sentences_per_passage=2)
    texts = training_texts(config)
    passages = [t for t in texts if not t.startswith("sentence")]
    assert len(texts) == 8 and len(passages) == 4 and set(passages) <= set(resources.load_passages(sentences_per_passage=2))
    assert texts != sorted(texts, key=lambda t: not t.startswith("sentence")), "sentences and passages are mixed"
    assert training_texts(config) == texts


def test_data_dir_names_a_wrong_ST_LEAP_DATA(tmp_path, monkeypatch):
    """A $ST_LEAP_DATA without stsb/ is an error that names it, never silently replaced by another folder."""
    monkeypatch.setenv("ST_LEAP_DATA", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="ST_LEAP_DATA=.*nope"):
        resources.data_dir()


def test_query_sentences_hold_out_the_dev_passages():
    """The query retrofit's texts never contain a sentence of the cloze dev passages (queries or documents)."""
    from st_leap import resources

    try:
        queries, corpus, _ = resources.cloze_retrieval_dev(50, 300)
    except FileNotFoundError as error:
        pytest.skip(str(error))
    pool = set(resources.query_sentences(None, held_out_documents=300))
    assert not pool & set(queries.values())
    dev_sentences = {s for run in resources.passage_runs()[-300:] for s in run}
    assert not pool & dev_sentences
    assert len(pool) > 100_000
