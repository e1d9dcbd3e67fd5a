from __future__ import annotations

import gzip
import json
import random
import warnings

import numpy as np
import pytest

from st_leap.corpus import (
    Corpus,
    corpus_dev,
    query_texts,
    read_corpus,
    read_document_embeddings,
    read_queries,
    sentences,
    split_documents,
)

DOCS = [
    {"_id": "d1", "title": "Red birds of the park", "text": "A red bird sings in the park. The old man feeds it bread."},
    {"_id": "d2", "title": "", "text": "Two dogs are running on the beach. A child plays with a big ball there."},
    {"_id": "d3", "title": "Pianos", "text": "The small blue piano is old. A woman plays it slowly every day."},
    {"_id": "d4", "title": "Horses and riders", "text": "A young woman is riding a horse. The horse is big and green."},
]


def write_jsonl(path, rows, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture()
def corpus_file(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", DOCS)


def test_read_beir_folder_jsonl_gz_and_text_file(tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    write_jsonl(folder / "corpus.jsonl.gz", DOCS, gz=True)
    corpus = read_corpus(folder)
    assert corpus.ids == ["d1", "d2", "d3", "d4"]
    assert corpus.documents[0] == "Red birds of the park A red bird sings in the park. The old man feeds it bread."
    assert corpus.documents[1] == DOCS[1]["text"]  # no title: the text alone
    text_file = tmp_path / "docs.txt"
    text_file.write_text("first document here.\n\nsecond document.\n", encoding="utf-8")
    lines = read_corpus(text_file)
    assert lines.ids == ["1", "3"] and lines.texts == ["first document here.", "second document."]
    assert lines.titles == ["", ""]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", "line 2: not a JSON object"),
        ({"title": "x", "text": "y"}, "line 2: missing _id"),
        ({"_id": "d9", "title": "x"}, "line 2: missing text"),
        ({"_id": "d1", "text": "again"}, "line 2: _id 'd1' repeats line 1"),
        ({"_id": "d9", "title": 3, "text": "y"}, "line 2: title is not a string"),
        ({"_id": "d9", "title": "x", "text": 5}, "line 2: missing text"),
    ],
)
def test_malformed_corpus_names_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "corpus.jsonl", [DOCS[0], row])
    with pytest.raises(ValueError, match=message):
        read_corpus(path)


def test_missing_and_empty_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_corpus(tmp_path / "nothing.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="no corpus.jsonl"):
        read_corpus(tmp_path / "folder")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        read_corpus(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no documents"):
        read_corpus(tmp_path / "blank.txt")


def test_sentences_split_on_end_punctuation():
    assert sentences("A dog runs. The cat sits! Is it 3 p.m.? 4 birds sing.") == [
        "A dog runs.", "The cat sits!", "Is it 3 p.m.?", "4 birds sing."
    ]


def test_query_texts_kinds_owners_dedup_and_seed(corpus_file):
    corpus = read_corpus(corpus_file)
    titles, owners = query_texts(corpus, kinds=["title"])
    # d2 has no title, d3's title has one word: neither gives a title query
    assert sorted(titles) == ["Horses and riders", "Red birds of the park"]
    assert all(corpus.titles[o] == t for t, o in zip(titles, owners))
    texts, owners = query_texts(corpus, seed=1)
    for text, owner in zip(texts, owners):
        assert text in corpus.documents[owner]  # every text is taken from its own document
    assert len({t.lower() for t in texts}) == len(texts)
    assert query_texts(corpus, seed=1) == (texts, owners)
    assert query_texts(corpus, seed=2)[0] != texts
    spans, _ = query_texts(corpus, kinds=["span"], span_words=(3, 3))
    assert spans and all(len(s.split()) <= 3 for s in spans)
    capped, capped_owners = query_texts(corpus, max_per_document=1)
    assert len(capped) == len(set(capped_owners)) == 4
    assert len(query_texts(corpus, max_texts=3)[0]) == 3
    with pytest.raises(ValueError, match="kinds"):
        query_texts(corpus, kinds=["questions"])


def test_duplicate_text_of_two_documents_is_kept_once():
    corpus = Corpus(["a", "b"], ["", ""], ["The same sentence is here.", "The same sentence is here."])
    texts, owners = query_texts(corpus, kinds=["sentence"])
    assert texts == ["The same sentence is here."] and owners == [0]


def test_split_and_dev_hold_out_documents(corpus_file):
    corpus = read_corpus(corpus_file)
    train, dev = split_documents(corpus, 2, seed=0)
    assert len(dev) == 2 and sorted(train + dev) == [0, 1, 2, 3]
    assert split_documents(corpus, 2, seed=0) == (train, dev)
    queries, documents, relevant = corpus_dev(corpus, dev, num_queries=10, seed=0)
    assert documents == dict(zip(corpus.ids, corpus.documents))  # the whole index
    dev_ids = {corpus.ids[i] for i in dev}
    for qid, text in queries.items():
        (doc,) = relevant[qid]
        assert doc in dev_ids and text in documents[doc]
    train_texts, train_owners = query_texts(corpus, train)
    assert not set(train_owners) & set(dev)
    with pytest.raises(ValueError, match="dev_documents"):
        split_documents(corpus, 4)


def test_read_document_embeddings(corpus_file, tmp_path):
    corpus = read_corpus(corpus_file)
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(tmp_path / "index.npz", ids=np.array(["d3", "d1", "d4", "d2"]), embeddings=vectors)
    rows = read_document_embeddings(tmp_path / "index.npz", corpus)
    np.testing.assert_array_equal(rows, vectors[[1, 3, 0, 2]])  # in corpus order
    np.savez(tmp_path / "short.npz", ids=np.array(["d1", "d2"]), embeddings=vectors[:2])
    with pytest.raises(ValueError, match="2 corpus id"):
        read_document_embeddings(tmp_path / "short.npz", corpus)
    np.savez(tmp_path / "noids.npz", embeddings=vectors)
    with pytest.raises(ValueError, match="'ids'"):
        read_document_embeddings(tmp_path / "noids.npz", corpus)
    np.save(tmp_path / "rows.npy", vectors[:3])
    with pytest.raises(ValueError, match="one row per document"):
        read_document_embeddings(tmp_path / "rows.npy", corpus)
    with pytest.raises(FileNotFoundError):
        read_document_embeddings(tmp_path / "absent.npz", corpus)


EMPTY = [{"_id": "e1", "title": " ", "text": "  "}, {"_id": "e2", "text": ""}]


def test_empty_documents_keep_their_place_and_give_no_text(tmp_path):
    """A document with an empty title and text stays in the corpus, in file order (the index holds it), with one
    warning naming the count and the first id; no query, training or dev text is ever made of it."""
    path = write_jsonl(tmp_path / "corpus.jsonl", [DOCS[0], DOCS[1], EMPTY[0], DOCS[2], DOCS[3], EMPTY[1]])
    with pytest.warns(UserWarning, match=r"2 of 6 documents have an empty title and text \(ids 'e1', 'e2'\)"):
        corpus = read_corpus(path)
    assert corpus.ids == ["d1", "d2", "e1", "d3", "d4", "e2"]
    assert corpus.empty == [2, 5] and corpus.with_text == [0, 1, 3, 4]
    assert corpus.documents[2] == corpus.documents[5] == ""  # what the index model embeds, as the index holds it
    _, owners = query_texts(corpus)
    assert owners and not set(owners) & {2, 5}
    for seed in range(20):
        train, dev = split_documents(corpus, 3, seed=seed)
        assert sorted(train + dev) == list(range(6)) and not set(dev) & {2, 5}  # empty documents are never held out
        queries, documents, relevant = corpus_dev(corpus, dev, seed=seed)
        assert documents["e1"] == "" and len(documents) == 6  # still in the index, retrievable
        assert queries and all(not docs & {"e1", "e2"} for docs in relevant.values())
    with pytest.raises(ValueError, match=r"dev_documents must be in 0..3 for 4 documents with text \(2 empty\)"):
        split_documents(corpus, 4)
    # document embeddings line up row for row, the empty documents' rows included
    vectors = np.arange(18, dtype=np.float32).reshape(6, 3)
    order = [5, 2, 0, 4, 1, 3]
    np.savez(tmp_path / "index.npz", ids=np.array([corpus.ids[i] for i in order]), embeddings=vectors[order])
    np.testing.assert_array_equal(read_document_embeddings(tmp_path / "index.npz", corpus), vectors)
    np.savez(tmp_path / "no_empty.npz", ids=np.array(corpus.ids[:2]), embeddings=vectors[:2])
    with pytest.raises(ValueError, match="4 corpus id"):
        read_document_embeddings(tmp_path / "no_empty.npz", corpus)


def test_without_empty_documents_the_split_is_unchanged(corpus_file):
    corpus = read_corpus(corpus_file)
    assert corpus.empty == []
    order = list(range(4))
    random.Random(7).shuffle(order)  # the draw of earlier releases: benchmark splits stay the same
    assert split_documents(corpus, 2, seed=7) == (sorted(order[2:]), sorted(order[:2]))


def test_empty_document_warning_names_the_first_ids_once(tmp_path):
    rows = [DOCS[0]] + [{"_id": f"e{i}", "text": ""} for i in range(7)]
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the filters would show it again: read_corpus itself says it once
        read_corpus(path)
        read_corpus(path)
    (warning,) = [w for w in caught if "empty title and text" in str(w.message)]
    message = str(warning.message)
    assert str(path) in message and "7 of 8 documents have" in message
    assert "'e0', 'e1', 'e2', 'e3', 'e4', ..." in message and "'e5'" not in message


def test_a_corpus_without_any_text_fails_naming_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n" + "\n".join(json.dumps(row) for row in EMPTY) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus.jsonl, line 2: no document has any text \(all 2 have an empty"):
        read_corpus(path)
    with pytest.raises(ValueError, match="no document has any text"):
        Corpus(["a", "b"], ["", " "], ["", ""])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"_id": "e1", "text": "again"}, "line 3: _id 'e1' repeats line 2"),
        ("[1, 2]", "line 3: not a JSON object"),
        ({"_id": "d9", "title": ""}, "line 3: missing text"),
        ({"title": "", "text": ""}, "line 3: missing _id"),
    ],
)
def test_malformed_line_after_an_empty_document_still_fails(tmp_path, row, message):
    path = write_jsonl(tmp_path / "corpus.jsonl", [DOCS[0], EMPTY[0], row])
    with pytest.raises(ValueError, match=f"corpus.jsonl, {message}"):
        read_corpus(path)


def test_read_queries_text_and_jsonl_files_deduplicated(tmp_path):
    """A query log reads as one query a line (gzip too) or as BEIR's queries.jsonl; blank lines and repeats go."""
    text = tmp_path / "log.txt.gz"
    with gzip.open(text, "wt", encoding="utf-8") as f:
        f.write("red birds\n\n  two dogs on the beach \nred birds\nold piano\n")
    assert read_queries(text) == ["red birds", "two dogs on the beach", "old piano"]
    rows = [{"_id": "q1", "text": "old piano", "metadata": {}}, {"_id": "q2", "text": "a horse"}, {"_id": "q3", "text": "old piano"}]
    assert read_queries(write_jsonl(tmp_path / "queries.jsonl", rows)) == ["old piano", "a horse"]


def test_bad_query_logs_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="queries file"):
        read_queries(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        read_queries(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="blank.txt, line 1: no query"):
        read_queries(tmp_path / "blank.txt")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"_id": "q1", "text": "fine"}, {"_id": "q2", "title": "no text"}])
    with pytest.raises(ValueError, match="bad.jsonl, line 2: missing text"):
        read_queries(bad)
