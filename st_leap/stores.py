"""Your index's vectors read straight from where they are kept: a FAISS index file or a LanceDB table.

:func:`st_leap.corpus.read_document_embeddings` calls these readers for anything that is not an ``.npz`` or an
``.npy``; each returns the rows of the corpus, in corpus order, as ``(len(ids), D)`` float32. Neither package is a
dependency of st_leap: each is imported when a store is read (``pip install faiss-cpu`` / ``pip install lancedb``,
or both with ``pip install 'st-leap[stores]'``).

- **FAISS** (:func:`read_faiss`): vectors through ``reconstruct_n`` (lossy for a compressed index such as PQ:
  the vectors the index scores with). Ids: an ``IndexIDMap`` / ``IndexIDMap2`` (or an IVF index filled with
  ``add_with_ids``) carries int64 ids. When every corpus id is an integer written as a string (``"4983"``), each
  corpus id is matched to the FAISS id of the same value (extra FAISS ids are ignored); otherwise the FAISS ids must
  be the documents' positions in the corpus, ``0`` to ``N - 1`` in any order. An index without ids holds its rows in
  corpus order: one per document.
- **LanceDB** (:func:`read_lancedb`): ``DB_FOLDER::TABLE`` or a ``TABLE.lance`` folder, optionally followed by
  ``?id=COLUMN&vector=COLUMN`` (default columns ``id`` and ``vector``); rows are matched to the corpus ids as
  strings, like an ``.npz``, in any order, extra rows ignored.

A module that imports nothing from st_leap.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

__all__ = [
    "HASH_INDEXES",
    "LANCEDB_COLUMNS",
    "LanceSpec",
    "is_lancedb_spec",
    "parse_lancedb_spec",
    "read_faiss",
    "read_lancedb",
    "require_package",
]

#: The default column names of a LanceDB table: ``{"id": ..., "vector": ...}``.
LANCEDB_COLUMNS = {"id": "id", "vector": "vector"}

#: FAISS index types whose codes are hashes: what ``reconstruct`` gives back is no embedding, so they are refused.
HASH_INDEXES = ("IndexLSH", "IndexIVFSpectralHash")

_INTEGER = re.compile(r"-?[0-9]+")
_INT64 = (-(2**63), 2**63 - 1)


def require_package(module: str, package: str, what: str) -> ModuleType:
    """Import ``module`` or say which package to install.

    Args:
        module: The module to import (``"faiss"``).
        package: Its pip package (``"faiss-cpu"``).
        what: What needs it, for the message (``"reading a FAISS index"``).

    Returns:
        The module.

    Raises:
        ImportError: the package is not installed, naming the ``pip install`` that brings it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{what} needs the {package} package: pip install {package} (or pip install 'st-leap[stores]')"
        ) from error


# ---------------------------------------------------------------------------------------------------- matching
def _rows_by_id(
    source: str, stored: Sequence[str], array: np.ndarray, ids: Sequence[str], how: str = ""
) -> np.ndarray:
    """``array``'s rows (one per ``stored`` id) in the order of ``ids``; every id needs exactly one row."""
    row: dict[str, int] = {}
    wanted = set(ids)
    for i, key in enumerate(stored):
        if key in wanted:
            if key in row:
                raise ValueError(f"{source}: corpus id {key!r} has more than one row (rows {row[key]} and {i})")
            row[key] = i
    absent = [key for key in ids if key not in row]
    if absent:
        raise ValueError(
            f"{source}: {len(absent):,} of {len(ids):,} corpus id(s) have no vector, e.g. {absent[0]!r}{how}"
        )
    return np.ascontiguousarray(array[[row[key] for key in ids]], dtype=np.float32)


# ------------------------------------------------------------------------------------------------------- FAISS
def _reconstruct_n(index: Any, count: int, path: Path) -> np.ndarray:
    try:
        vectors = index.reconstruct_n(0, count)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "reconstruct_n failed"
        raise ValueError(
            f"{path}: a FAISS {type(index).__name__} cannot give back its vectors ({reason}); pass your index's "
            "vectors as an .npz with 'ids' and 'embeddings' instead"
        ) from None
    return np.asarray(vectors, dtype=np.float32)


def _ivf_inside(faiss: ModuleType, index: Any) -> Any:
    """The IVF index that is ``index`` or sits inside it (an ``IndexPreTransform``...), or ``None``."""
    if isinstance(index, faiss.IndexIVF):
        return index
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def _ivf_ids(faiss: ModuleType, index: Any) -> np.ndarray:
    """The ids stored in an IVF index's inverted lists (in list order)."""
    lists = index.invlists
    parts = []
    for list_no in range(index.nlist):
        size = lists.list_size(list_no)
        if size:
            pointer = lists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(pointer, size).copy())
            lists.release_ids(list_no, pointer)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _ivf_by_ids(faiss: ModuleType, index: Any, ids: np.ndarray, path: Path) -> np.ndarray:
    """The vectors of an IVF index filled with ``add_with_ids``, in the order of ``ids`` (through a hash-table
    direct map built in memory; the file is not changed)."""
    try:
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return np.stack([index.reconstruct(int(key)) for key in ids]).astype(np.float32)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "reconstruct failed"
        raise ValueError(
            f"{path}: a FAISS {type(index).__name__} cannot give back its vectors ({reason}); pass your index's "
            "vectors as an .npz with 'ids' and 'embeddings' instead"
        ) from None


def _match_faiss_ids(
    path: Path, kind: str, faiss_ids: np.ndarray, vectors: np.ndarray, ids: Sequence[str]
) -> np.ndarray:
    """Rows of ``vectors`` (one per ``faiss_ids``) in corpus order, by the id rule of :func:`read_faiss`."""
    if all(_INTEGER.fullmatch(key) for key in ids):
        values = [int(key) for key in ids]
        if not all(_INT64[0] <= v <= _INT64[1] for v in values):
            raise ValueError(
                f"{path}: a corpus id does not fit a FAISS int64 id; pass an .npz with 'ids' and 'embeddings'"
            )
        if len(set(values)) != len(values):
            raise ValueError(
                f"{path}: two corpus ids are the same integer (e.g. '7' and '07'), so the {kind}'s int64 ids cannot "
                "tell them apart; pass an .npz with 'ids' and 'embeddings'"
            )
        stored = [str(v) for v in faiss_ids.tolist()]
        keys = [str(v) for v in values]
        return _rows_by_id(
            str(path),
            stored,
            vectors,
            keys,
            f" (the {kind}'s int64 ids are matched to the corpus ids as integers)",
        )
    count = len(ids)
    if len(faiss_ids) != count:
        raise ValueError(
            f"{path}: the {kind} holds {len(faiss_ids):,} vectors, the corpus {count:,} documents (its ids are not "
            "integers, so the FAISS ids must be the documents' positions 0 to N - 1, one per document)"
        )
    order = np.argsort(faiss_ids, kind="stable")
    if not np.array_equal(faiss_ids[order], np.arange(count)):
        unique, counts = np.unique(faiss_ids, return_counts=True)
        outside = unique[(unique < 0) | (unique >= count)]
        found = f"id {int(outside[0])}" if len(outside) else f"id {int(unique[counts > 1][0])} twice"
        raise ValueError(
            f"{path}: the corpus ids are not integers, so the {kind}'s int64 ids must be the documents' positions "
            f"0 to {count - 1} (each once); found {found}. Pass an .npz with 'ids' and 'embeddings' instead"
        )
    return np.ascontiguousarray(vectors[order], dtype=np.float32)


def read_faiss(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """The vectors of a FAISS index file, one row per corpus id, in corpus order.

    Vectors come from ``reconstruct_n`` (for a compressed index, e.g. PQ or scalar quantizer, the decoded vectors
    the index scores with). Which row belongs to which document:

    - an ``IndexIDMap`` / ``IndexIDMap2``, or an IVF index filled with ``add_with_ids`` (ids other than
      ``0..N-1``), carries int64 ids. When every corpus id is an integer written as a string (``"4983"``), a corpus
      id is matched to the FAISS id of the same value (FAISS ids that are no corpus id are ignored). Otherwise (ids
      such as ``"doc-17"``) the FAISS ids must be the documents' positions in the corpus: ``0`` to ``N - 1``, each
      once, in any order.
    - any other index (``IndexFlatIP``, ``IndexHNSWFlat``, an IVF index filled with ``add``...) has its rows in
      corpus order: exactly one per document.

    Args:
        path: The file ``faiss.write_index`` wrote.
        ids: The corpus ids, in corpus order.

    Returns:
        ``(len(ids), D)`` float32 rows in corpus order.

    Raises:
        ImportError: faiss is not installed (naming ``pip install faiss-cpu``).
        ValueError: naming the file: not a FAISS index, an empty index, an index type that cannot give back its
            vectors (naming the type: one that fails ``reconstruct_n``, or a hash index of :data:`HASH_INDEXES`),
            an IVF index filled with ``add_with_ids`` inside another index, a row count or dimension that does not
            match, a corpus id without a vector or with two, or ids that follow neither rule.
    """
    faiss = require_package("faiss", "faiss-cpu", "reading a FAISS index")
    path = Path(path)
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        reason = lines[-1] if lines else "unreadable"
        raise ValueError(
            f"{path}: not an .npz, an .npy or a FAISS index that faiss.read_index reads ({reason}); binary FAISS "
            "indexes are not supported"
        ) from None
    count, dimension = int(index.ntotal), int(index.d)
    kind = type(index).__name__
    if count == 0:
        raise ValueError(f"{path}: the FAISS {kind} holds no vectors")
    faiss_ids = None
    inner = index
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        faiss_ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        inner = faiss.downcast_index(index.index)
        if len(faiss_ids) != count or int(inner.ntotal) != count:
            raise ValueError(f"{path}: the {kind} holds {count:,} vectors but {len(faiss_ids):,} ids")
    if type(inner).__name__ in HASH_INDEXES:
        raise ValueError(
            f"{path}: a FAISS {type(inner).__name__} keeps binary hashes of the vectors, not the vectors, so it "
            "cannot give them back; pass your index's vectors as an .npz with 'ids' and 'embeddings' instead"
        )
    ivf = _ivf_inside(faiss, inner)
    ivf_ids = _ivf_ids(faiss, ivf) if ivf is not None else None
    if ivf_ids is not None and not np.array_equal(np.sort(ivf_ids), np.arange(len(ivf_ids))):
        # an IVF index filled with add_with_ids: reconstruct_n would read its ids as row numbers
        if faiss_ids is not None or ivf is not inner:
            raise ValueError(
                f"{path}: the FAISS {kind} holds an IVF index filled with add_with_ids inside a "
                f"{'id map' if faiss_ids is not None else type(inner).__name__}, whose vectors cannot be matched to "
                "their ids here; pass your index's vectors as an .npz with 'ids' and 'embeddings' instead"
            )
        faiss_ids = ivf_ids
        vectors = _ivf_by_ids(faiss, inner, ivf_ids, path)
    else:
        vectors = _reconstruct_n(inner, count, path)
    if vectors.shape != (count, dimension):
        raise ValueError(
            f"{path}: the FAISS {kind} gave vectors of shape {vectors.shape}, expected ({count:,}, {dimension})"
        )
    if faiss_ids is not None:
        return _match_faiss_ids(path, f"FAISS {kind}", faiss_ids, vectors, ids)
    if count != len(ids):
        raise ValueError(
            f"{path}: the FAISS {kind} holds {count:,} vectors of dimension {dimension} and no ids, so its rows are "
            f"taken in corpus order: the corpus has {len(ids):,} documents, one row each is needed (an IndexIDMap "
            "with the corpus ids, or an .npz with 'ids' and 'embeddings', can hold other rows too)"
        )
    return np.ascontiguousarray(vectors, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------- LanceDB
class LanceSpec:
    """A LanceDB table to read: its database folder, its name and its id and vector columns.

    Args:
        database: The database folder (what ``lancedb.connect`` opens).
        table: The table's name.
        id_column: The column of document ids.
        vector_column: The column of vectors.
        text: The spec as given, for messages.
    """

    def __init__(self, database: Path, table: str, id_column: str, vector_column: str, text: str) -> None:
        self.database, self.table = database, table
        self.id_column, self.vector_column, self.text = id_column, vector_column, text

    def __repr__(self) -> str:
        return (
            f"LanceSpec(database={str(self.database)!r}, table={self.table!r}, id_column={self.id_column!r}, "
            f"vector_column={self.vector_column!r})"
        )


def _split_options(spec: str) -> tuple[str, str]:
    base, mark, options = spec.rpartition("?")
    return (base, options) if mark else (spec, "")


def is_lancedb_spec(spec: str | Path) -> bool:
    """Whether ``spec`` names a LanceDB table: ``DB::TABLE`` or a ``TABLE.lance`` folder, with or without
    ``?id=...&vector=...``.

    Args:
        spec: The ``--document-embeddings`` value.

    Returns:
        True for a LanceDB table spec.
    """
    text = str(spec)
    if Path(text).is_file():
        return False
    base = _split_options(text)[0]
    return "::" in base or base.rstrip("/\\").endswith(".lance")


def parse_lancedb_spec(spec: str | Path) -> LanceSpec:
    """Read a LanceDB table spec: ``DB_FOLDER::TABLE`` or ``DB_FOLDER/TABLE.lance``, then optionally
    ``?id=COLUMN&vector=COLUMN`` for other column names than ``id`` and ``vector``.

    Args:
        spec: The spec, e.g. ``"index_db::docs?id=doc_id&vector=embedding"``.

    Returns:
        The :class:`LanceSpec`.

    Raises:
        ValueError: no table name, an option other than ``id`` / ``vector``, an option given twice or empty.
    """
    text = str(spec)
    base, options = _split_options(text)
    if "::" in base:
        database, _, table = base.rpartition("::")
        database_path = Path(database)
    else:
        folder = Path(base.rstrip("/\\"))
        database_path, table = folder.parent, folder.name[: -len(".lance")]
    if not table or not str(database_path):
        raise ValueError(f"{text}: a LanceDB table is DB_FOLDER::TABLE or DB_FOLDER/TABLE.lance")
    columns = dict(LANCEDB_COLUMNS)
    seen: set[str] = set()
    try:
        pairs = parse_qsl(options, keep_blank_values=True, strict_parsing=bool(options))
    except ValueError:
        raise ValueError(f"{text}: options are ?id=COLUMN&vector=COLUMN, got {options!r}") from None
    for key, value in pairs:
        if key not in LANCEDB_COLUMNS or key in seen or not value:
            raise ValueError(
                f"{text}: options are ?id=COLUMN&vector=COLUMN (each once, not empty), got {key}={value!r}"
            )
        seen.add(key)
        columns[key] = value
    return LanceSpec(database_path, table, columns["id"], columns["vector"], text)


def _vector_rows(column: Any, source: str, name: str) -> np.ndarray:
    """A LanceDB vector column (fixed-size or variable lists of numbers) as a 2-D float32 array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = column.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        raise ValueError(f"{source}: column {name!r} is {kind}, not a vector (a list of numbers)")
    if not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise ValueError(f"{source}: column {name!r} holds {kind.value_type}, not numbers")
    if column.null_count:
        raise ValueError(f"{source}: column {name!r} has {column.null_count:,} empty (null) vector(s)")
    rows = len(column)
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
    else:
        lengths = np.unique(pc.list_value_length(column).to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise ValueError(
                f"{source}: vectors of column {name!r} differ in length ({', '.join(map(str, lengths[:5]))})"
            )
        width = int(lengths[0]) if len(lengths) else 0
    values = column.flatten()
    if values.null_count:
        raise ValueError(f"{source}: column {name!r} has empty (null) numbers inside its vectors")
    array = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if width < 1 or array.size != rows * width:
        raise ValueError(f"{source}: column {name!r} does not hold {rows:,} vectors of one dimension")
    return array.reshape(rows, width)


def read_lancedb(spec: str | Path, ids: Sequence[str]) -> np.ndarray:
    """The vectors of a LanceDB table, one row per corpus id, in corpus order.

    The table's id column (default ``id``; any type, read as a string: ``17`` matches the corpus id ``"17"``) and
    vector column (default ``vector``; fixed-size or variable lists of numbers) are read; rows may be in any order
    and rows of ids that are not in the corpus are ignored, as in an ``.npz``.

    Args:
        spec: ``DB_FOLDER::TABLE`` or ``DB_FOLDER/TABLE.lance``, optionally followed by ``?id=COLUMN&vector=COLUMN``
            (:func:`parse_lancedb_spec`).
        ids: The corpus ids, in corpus order.

    Returns:
        ``(len(ids), D)`` float32 rows in corpus order.

    Raises:
        ImportError: lancedb is not installed (naming ``pip install lancedb``).
        FileNotFoundError: the database folder or the table does not exist (naming the tables there are).
        ValueError: naming the table: a bad spec, a missing column (naming the columns there are), a column of the
            wrong type, an empty id or vector, vectors of different lengths, a corpus id without a row or with two.
    """
    parsed = parse_lancedb_spec(spec)
    lancedb = require_package("lancedb", "lancedb", "reading a LanceDB table")
    source = parsed.text
    if not parsed.database.is_dir():
        raise FileNotFoundError(f"{source}: LanceDB database folder {parsed.database} does not exist")
    database = lancedb.connect(str(parsed.database))
    try:
        table = database.open_table(parsed.table)
    except (ValueError, OSError, RuntimeError):
        there = ", ".join(sorted(_table_names(database))[:10]) or "none"
        raise FileNotFoundError(
            f"{source}: no table {parsed.table!r} in {parsed.database} (tables: {there})"
        ) from None
    columns = list(table.schema.names)
    for role, name in (("id", parsed.id_column), ("vector", parsed.vector_column)):
        if name not in columns:
            raise ValueError(
                f"{source}: no {role} column {name!r} (columns: {', '.join(columns)}); name it with ?{role}=COLUMN"
            )
    count = table.count_rows()
    if count == 0:
        raise ValueError(f"{source}: the table has no rows")
    # only the two columns, every row: a scan without a query vector
    data = table.search().select([parsed.id_column, parsed.vector_column]).limit(count).to_arrow()
    id_column = data.column(parsed.id_column)
    if id_column.null_count:
        raise ValueError(f"{source}: column {parsed.id_column!r} has {id_column.null_count:,} empty (null) id(s)")
    stored = [str(value) for value in id_column.to_pylist()]
    vectors = _vector_rows(data.column(parsed.vector_column), source, parsed.vector_column)
    return _rows_by_id(source, stored, vectors, ids, f" (matched to column {parsed.id_column!r})")


def _table_names(database: Any) -> list[str]:
    """The table names of a LanceDB connection, through whichever listing call the installed version has."""
    listing = getattr(database, "list_tables", None)
    if listing is not None:
        try:
            result = listing()
            names = getattr(result, "tables", result)
            return [str(name) for name in names]
        except (TypeError, NotImplementedError):
            pass
    return [str(name) for name in database.table_names()]
