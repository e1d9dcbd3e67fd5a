"""Your index's vectors read straight from a FAISS index file or a LanceDB table (``st_leap.stores``, through
``st_leap.corpus.read_document_embeddings``): each reads back exactly the rows the ``.npz`` of the same vectors gives,
in corpus order, and a count mismatch, a missing id, a missing column or an index that cannot give back its vectors
fails with a message naming the file or table."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from st_leap import stores
from st_leap.corpus import read_corpus, read_document_embeddings

TEXTS = [
    "A red bird sings in the park.",
    "Two dogs are running on the beach.",
    "The small blue piano is old.",
    "A young woman is riding a horse.",
    "An old man feeds the birds bread.",
    "Three children play with a big ball.",
]
STRING_IDS = ["doc-a", "doc-b", "doc-c", "doc-d", "doc-e", "doc-f"]
INTEGER_IDS = ["4983", "17", "5", "123456789012", "0", "88"]
SHUFFLE = [3, 0, 5, 1, 4, 2]  # the order a store holds the documents in
DIMENSION = 8


def write_corpus(path, ids):
    path.write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in zip(ids, TEXTS)))
    return read_corpus(path)


@pytest.fixture()
def vectors():
    """One unit vector per document, in corpus order."""
    rows = np.random.default_rng(0).standard_normal((len(TEXTS), DIMENSION)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def npz_rows(tmp_path, corpus, vectors):
    """What the .npz path gives for the same vectors, stored shuffled: the reference every store must equal."""
    path = tmp_path / "index.npz"
    np.savez(path, ids=np.array([corpus.ids[i] for i in SHUFFLE]), embeddings=vectors[SHUFFLE])
    rows = read_document_embeddings(path, corpus)
    np.testing.assert_array_equal(rows, vectors)
    return rows


# ------------------------------------------------------------------------------------------------------- FAISS
@pytest.fixture()
def faiss():
    return pytest.importorskip("faiss")


def test_faiss_flat_index_rows_are_in_corpus_order(faiss, tmp_path, vectors):
    corpus = write_corpus(tmp_path / "corpus.jsonl", STRING_IDS)
    index = faiss.IndexFlatIP(DIMENSION)
    index.add(vectors)
    faiss.write_index(index, str(tmp_path / "flat.faiss"))
    rows = read_document_embeddings(tmp_path / "flat.faiss", corpus)
    assert rows.dtype == np.float32 and rows.shape == (len(TEXTS), DIMENSION)
    np.testing.assert_array_equal(rows, npz_rows(tmp_path, corpus, vectors))


@pytest.mark.parametrize("wrapper", ["IndexIDMap", "IndexIDMap2"])
def test_faiss_id_map_matches_integer_corpus_ids(faiss, tmp_path, vectors, wrapper):
    corpus = write_corpus(tmp_path / "corpus.jsonl", INTEGER_IDS)
    index = getattr(faiss, wrapper)(faiss.IndexFlatIP(DIMENSION))
    extra = np.full((1, DIMENSION), 9.0, dtype=np.float32)  # an id of no corpus document: ignored
    stored = np.concatenate([vectors[SHUFFLE], extra])
    index.add_with_ids(stored, np.array([int(INTEGER_IDS[i]) for i in SHUFFLE] + [77], dtype=np.int64))
    faiss.write_index(index, str(tmp_path / "ids.index"))
    np.testing.assert_array_equal(
        read_document_embeddings(tmp_path / "ids.index", corpus), npz_rows(tmp_path, corpus, vectors)
    )


def test_faiss_ivf_with_its_own_ids(faiss, tmp_path, vectors):
    corpus = write_corpus(tmp_path / "corpus.jsonl", INTEGER_IDS)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIMENSION), DIMENSION, 2, faiss.METRIC_INNER_PRODUCT)
    index.train(np.tile(vectors, (20, 1)))
    index.add_with_ids(vectors[SHUFFLE], np.array([int(INTEGER_IDS[i]) for i in SHUFFLE], dtype=np.int64))
    faiss.write_index(index, str(tmp_path / "ivf.faiss"))
    np.testing.assert_array_equal(
        read_document_embeddings(tmp_path / "ivf.faiss", corpus), npz_rows(tmp_path, corpus, vectors)
    )


def test_faiss_id_map_with_string_corpus_ids_takes_positions(faiss, tmp_path, vectors):
    corpus = write_corpus(tmp_path / "corpus.jsonl", STRING_IDS)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(DIMENSION))
    index.add_with_ids(vectors[SHUFFLE], np.array(SHUFFLE, dtype=np.int64))  # id = the document's position
    faiss.write_index(index, str(tmp_path / "positions.faiss"))
    np.testing.assert_array_equal(
        read_document_embeddings(tmp_path / "positions.faiss", corpus), npz_rows(tmp_path, corpus, vectors)
    )
    index = faiss.IndexIDMap(faiss.IndexFlatIP(DIMENSION))
    index.add_with_ids(vectors, np.arange(100, 100 + len(TEXTS), dtype=np.int64))
    faiss.write_index(index, str(tmp_path / "other.faiss"))
    with pytest.raises(ValueError, match=r"other\.faiss: the corpus ids are not integers.*positions 0 to 5.*id 100"):
        read_document_embeddings(tmp_path / "other.faiss", corpus)


def test_faiss_errors_name_the_file(faiss, tmp_path, vectors, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.jsonl", INTEGER_IDS)
    short = faiss.IndexFlatIP(DIMENSION)
    short.add(vectors[:-1])
    faiss.write_index(short, str(tmp_path / "short.faiss"))
    with pytest.raises(ValueError, match=r"short\.faiss: the FAISS IndexFlatIP holds 5 vectors .* 6 documents"):
        read_document_embeddings(tmp_path / "short.faiss", corpus)

    missing = faiss.IndexIDMap(faiss.IndexFlatIP(DIMENSION))
    missing.add_with_ids(vectors[1:], np.array([int(i) for i in INTEGER_IDS[1:]], dtype=np.int64))
    faiss.write_index(missing, str(tmp_path / "missing.faiss"))
    with pytest.raises(ValueError, match=r"missing\.faiss: 1 of 6 corpus id\(s\) have no vector, e.g. '4983'"):
        read_document_embeddings(tmp_path / "missing.faiss", corpus)

    twice = faiss.IndexIDMap(faiss.IndexFlatIP(DIMENSION))
    twice.add_with_ids(np.concatenate([vectors, vectors[:1]]), np.array([*map(int, INTEGER_IDS), 4983]))
    faiss.write_index(twice, str(tmp_path / "twice.faiss"))
    with pytest.raises(ValueError, match=r"twice\.faiss: corpus id '4983' has more than one row"):
        read_document_embeddings(tmp_path / "twice.faiss", corpus)

    lsh = faiss.IndexLSH(DIMENSION, 16)  # reconstruct gives back +-1 signs, not embeddings
    lsh.add(vectors)
    faiss.write_index(lsh, str(tmp_path / "lsh.faiss"))
    with pytest.raises(ValueError, match=r"lsh\.faiss: a FAISS IndexLSH keeps binary hashes .*\.npz"):
        read_document_embeddings(tmp_path / "lsh.faiss", corpus)

    hashed = faiss.IndexIVFSpectralHash(faiss.IndexFlatL2(DIMENSION), DIMENSION, 2, 8, 1.0)
    hashed.train(np.tile(vectors, (20, 1)))
    hashed.add(vectors)
    faiss.write_index(hashed, str(tmp_path / "sh.faiss"))
    with pytest.raises(ValueError, match=r"sh\.faiss: a FAISS IndexIVFSpectralHash (keeps binary|cannot give)"):
        read_document_embeddings(tmp_path / "sh.faiss", corpus)
    monkeypatch.setattr(stores, "HASH_INDEXES", ())  # past the list: reconstruct_n itself fails, and says why
    with pytest.raises(
        ValueError,
        match=r"sh\.faiss: a FAISS IndexIVFSpectralHash cannot give back its vectors "
        r"\(.*not implemented\).*\.npz",
    ):
        read_document_embeddings(tmp_path / "sh.faiss", corpus)

    (tmp_path / "notes.bin").write_bytes(b"not an index at all")
    with pytest.raises(ValueError, match=r"notes\.bin: not an \.npz, an \.npy or a FAISS index"):
        read_document_embeddings(tmp_path / "notes.bin", corpus)


def test_faiss_missing_package_names_the_install(tmp_path, vectors, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.jsonl", STRING_IDS)
    (tmp_path / "index.faiss").write_bytes(b"IxFI" + bytes(60))
    monkeypatch.setitem(sys.modules, "faiss", None)  # "import faiss" now raises ImportError
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        read_document_embeddings(tmp_path / "index.faiss", corpus)


def test_npy_and_npz_under_other_names_are_still_read(tmp_path, vectors):
    corpus = write_corpus(tmp_path / "corpus.jsonl", STRING_IDS)
    with open(tmp_path / "rows.bin", "wb") as f:
        np.save(f, vectors)
    np.testing.assert_array_equal(read_document_embeddings(tmp_path / "rows.bin", corpus), vectors)
    with open(tmp_path / "index.data", "wb") as f:
        np.savez(f, ids=np.array(STRING_IDS), embeddings=vectors)
    np.testing.assert_array_equal(read_document_embeddings(tmp_path / "index.data", corpus), vectors)


# ----------------------------------------------------------------------------------------------------- LanceDB
def test_lancedb_spec_syntax(tmp_path):
    spec = stores.parse_lancedb_spec("runs/db::docs")
    assert (str(spec.database), spec.table, spec.id_column, spec.vector_column) == ("runs/db", "docs", "id", "vector")
    spec = stores.parse_lancedb_spec("runs/db/docs.lance/?id=doc_id&vector=embedding")
    assert (str(spec.database), spec.table, spec.id_column, spec.vector_column) == (
        "runs/db",
        "docs",
        "doc_id",
        "embedding",
    )
    assert stores.is_lancedb_spec("db::t?vector=v") and stores.is_lancedb_spec("db/t.lance")
    assert not stores.is_lancedb_spec("index.npz")
    for bad in ("db::t?text=x", "db::t?id=", "db::t?id=a&id=b", "db::"):
        with pytest.raises(ValueError, match="DB_FOLDER::TABLE|id=COLUMN"):
            stores.parse_lancedb_spec(bad)


@pytest.fixture()
def lance_db(tmp_path, vectors):
    """A LanceDB database with table ``docs`` (columns id, vector, text: the documents shuffled) and ``renamed``
    (the same with columns doc_id, embedding)."""
    lancedb = pytest.importorskip("lancedb")
    db = lancedb.connect(str(tmp_path / "db"))
    rows = [{"id": STRING_IDS[i], "vector": vectors[i].tolist(), "text": TEXTS[i]} for i in SHUFFLE]
    rows.append({"id": "not-in-corpus", "vector": [9.0] * DIMENSION, "text": "extra"})  # ignored, as in an .npz
    db.create_table("docs", data=rows)
    db.create_table("renamed", data=[{"doc_id": r["id"], "embedding": r["vector"]} for r in rows])
    return tmp_path / "db"


def test_lancedb_table_rows_match_the_corpus_ids(tmp_path, vectors, lance_db):
    corpus = write_corpus(tmp_path / "corpus.jsonl", STRING_IDS)
    expected = npz_rows(tmp_path, corpus, vectors)
    for spec in (f"{lance_db}::docs", str(lance_db / "docs.lance"), f"{lance_db}::renamed?id=doc_id&vector=embedding"):
        rows = read_document_embeddings(spec, corpus)
        assert rows.dtype == np.float32
        np.testing.assert_array_equal(rows, expected)


def test_lancedb_errors_name_the_table(tmp_path, vectors, lance_db):
    corpus = write_corpus(tmp_path / "corpus.jsonl", STRING_IDS)
    with pytest.raises(
        ValueError, match=r"::renamed: no id column 'id' \(columns: doc_id, embedding\); name it with ?"
    ):
        read_document_embeddings(f"{lance_db}::renamed", corpus)
    with pytest.raises(ValueError, match=r"no vector column 'embedding' \(columns: id, vector, text\)"):
        read_document_embeddings(f"{lance_db}::docs?vector=embedding", corpus)
    with pytest.raises(ValueError, match="column 'text' is string, not a vector"):
        read_document_embeddings(f"{lance_db}::docs?vector=text", corpus)
    with pytest.raises(FileNotFoundError, match=r"no table 'nope' .*tables: docs, renamed"):
        read_document_embeddings(f"{lance_db}::nope", corpus)
    with pytest.raises(FileNotFoundError, match="database folder .* does not exist"):
        read_document_embeddings(f"{tmp_path / 'nowhere'}::docs", corpus)
    with pytest.raises(ValueError, match="is a folder: for a LanceDB table give DB_FOLDER::TABLE"):
        read_document_embeddings(lance_db, corpus)
    more = write_corpus(tmp_path / "more.jsonl", [*STRING_IDS[:-1], "doc-z"])
    with pytest.raises(ValueError, match=r"::docs: 1 of 6 corpus id\(s\) have no vector, e.g. 'doc-z'"):
        read_document_embeddings(f"{lance_db}::docs", more)


def test_lancedb_missing_package_names_the_install(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.jsonl", STRING_IDS)
    (tmp_path / "db").mkdir()
    monkeypatch.setitem(sys.modules, "lancedb", None)
    with pytest.raises(ImportError, match="pip install lancedb"):
        read_document_embeddings(f"{tmp_path / 'db'}::docs", corpus)


def test_lancedb_integer_ids_and_an_empty_table(tmp_path, vectors):
    lancedb = pytest.importorskip("lancedb")
    import pyarrow as pa

    corpus = write_corpus(tmp_path / "corpus.jsonl", INTEGER_IDS)
    db = lancedb.connect(str(tmp_path / "db"))
    db.create_table("docs", data=[{"id": int(INTEGER_IDS[i]), "vector": vectors[i].tolist()} for i in SHUFFLE])
    schema = pa.schema([pa.field("id", pa.string()), pa.field("vector", pa.list_(pa.float32(), DIMENSION))])
    db.create_table("empty", schema=schema)
    np.testing.assert_array_equal(
        read_document_embeddings(f"{tmp_path / 'db'}::docs", corpus), npz_rows(tmp_path, corpus, vectors)
    )
    with pytest.raises(ValueError, match="::empty: the table has no rows"):
        read_document_embeddings(f"{tmp_path / 'db'}::empty", corpus)


def test_fit_query_encoder_checks_a_store_before_loading_a_model(faiss, tmp_path, vectors, capsys):
    """``st-leap fit-query-encoder --document-embeddings`` with a FAISS index that lacks a document stops with the
    file named (exit 2) before any model loads (the model path does not even exist)."""
    from st_leap.cli import main

    corpus_path = tmp_path / "corpus.jsonl"
    write_corpus(corpus_path, STRING_IDS)
    short = faiss.IndexFlatIP(DIMENSION)
    short.add(vectors[:-1])
    faiss.write_index(short, str(tmp_path / "short.faiss"))
    argv = ["fit-query-encoder", str(tmp_path / "no-such-model"), "--corpus", str(corpus_path), "--out"]
    assert main([*argv, str(tmp_path / "out"), "--document-embeddings", str(tmp_path / "short.faiss")]) == 2
    assert "short.faiss: the FAISS IndexFlatIP holds 5 vectors" in capsys.readouterr().err


def test_faiss_ivf_with_its_own_ids_inside_a_transform_is_refused(faiss, tmp_path, vectors):
    """``reconstruct_n`` of such an index reads the ids as row numbers and gives back rows never written: refused."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", INTEGER_IDS)
    index = faiss.index_factory(DIMENSION, "PCA4,IVF2,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(np.tile(vectors, (20, 1)) + np.random.default_rng(1).normal(0, 0.1, (120, DIMENSION)).astype("f4"))
    index.add_with_ids(vectors, np.array([int(i) for i in INTEGER_IDS], dtype=np.int64))
    faiss.write_index(index, str(tmp_path / "pre.faiss"))
    with pytest.raises(ValueError, match=r"pre\.faiss: the FAISS IndexPreTransform holds an IVF index filled with "):
        read_document_embeddings(tmp_path / "pre.faiss", corpus)
