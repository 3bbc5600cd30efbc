"""A vector index on an embedding store (:mod:`nfaudio.embed.store`), built with faiss (Johnson, Douze and Jégou
2019, "Billion-scale similarity search with GPUs"; ``pip install 'nfaudio[index]'``, i.e. faiss-cpu).

Metric: cosine similarity, i.e. the inner product of L2-normalised embeddings, the same as the exact search of
:mod:`nfaudio.embed.search`; ``distance = 1 - cosine`` (0 for the same direction, 2 for the opposite). Kinds:

- ``flat``: ``IndexFlatIP``, exact (the same ranks as the numpy search, up to float32 rounding of near ties);
- ``hnsw``: ``IndexHNSWFlat`` (Malkov and Yashunin 2018, "Efficient and robust approximate nearest neighbor
  search using Hierarchical Navigable Small World graphs"), approximate, for big stores; ``m`` links per node,
  ``ef_search`` candidates per query (raise it for recall, at the cost of speed);
- ``ivf``: ``IndexIVFFlat``, approximate: ``nlist`` k-means cells (default ``4 sqrt(N)``, at most ``N / 39``),
  ``nprobe`` of them searched per query.

One file, written atomically: ``DIR/index.npz`` holds the serialised faiss index, the row keys (``file, start_s,
end_s`` in store row order, so a search never reads the shards) and ``meta`` (JSON: kind, parameters, rows, dim
and the store's fingerprint, :func:`store_fingerprint`). A store that changed after the index was built (a resumed
or overwritten ``nfaudio embed``) no longer matches the fingerprint: :func:`open_index` refuses it with
:class:`StaleIndexError` (or rebuilds it, ``rebuild=True``).

faiss is imported on first use. Without it, :func:`build_index` raises an ``ImportError`` naming the extra, and
:func:`search_store` falls back to the exact numpy search (same hits as a flat index, slower on big stores).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from nfaudio.embed import search as exact
from nfaudio.embed.store import KEY_COLUMNS, META, EmbeddingStore, StoreError, open_store
from nfaudio.fileio import atomic_open

__all__ = ["FAISS", "INDEX_FILE", "INDEX_KINDS", "IndexFileError", "MissingIndexError", "StaleIndexError",
           "VectorIndex", "build_index", "open_index", "require_faiss", "search_store", "store_fingerprint",
           "try_faiss"]

log = logging.getLogger(__name__)

FAISS = "faiss"  # the module faiss-cpu installs
INDEX_FILE = "index.npz"
INDEX_KINDS = ("flat", "hnsw", "ivf")
FORMAT = "nfaudio-index"
VERSION = 1
EXTRA_HINT = "pip install 'nfaudio[index]' (faiss-cpu)"


class IndexFileError(StoreError):
    """An index file that cannot be used with its store."""


class MissingIndexError(IndexFileError):
    """The store has no index (build one with ``nfaudio index build DIR``)."""


class StaleIndexError(IndexFileError):
    """The store changed after its index was built."""


def try_faiss(name: str = FAISS) -> ModuleType | None:
    """The faiss module, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def require_faiss(name: str = FAISS) -> ModuleType:
    """The faiss module.

    Raises:
        ImportError: not installed (the message names the extra to install).
    """
    module = try_faiss(name)
    if module is None:
        raise ImportError(f"the vector index needs faiss: {EXTRA_HINT}")
    return module


def store_fingerprint(store: EmbeddingStore) -> str:
    """A digest of what the store holds: its dimension, settings, listed shards (name, rows, files) and each shard
    file's size and modification time; it changes whenever a writer adds, replaces or removes a shard."""
    meta = json.loads((store.root / META).read_text())
    shards = []
    for s in meta.get("shards", []):
        st = (store.root / s["name"]).stat()
        shards.append([s["name"], s["rows"], s.get("files"), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"dim": meta.get("dim"), "info": meta.get("info"), "classes": meta.get("classes"),
                       "shards": shards}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


class VectorIndex:
    """A faiss index over a store's rows with their keys (see the module docstring); build with
    :func:`build_index`, load with :func:`open_index` or :meth:`load`.

    Attributes:
        kind: ``flat``, ``hnsw`` or ``ivf``. dim: embedding size. keys: ``file, start_s, end_s`` per row.
        params: the kind's parameters (``m``, ``ef_construction``, ``ef_search``; ``nlist``, ``nprobe``).
        fingerprint: the store's :func:`store_fingerprint` when the index was built.
    """

    def __init__(self, index: Any, kind: str, keys: pd.DataFrame, params: dict[str, Any], fingerprint: str,
                 build_seconds: float = 0.0) -> None:
        self.index, self.kind, self.params, self.fingerprint = index, kind, dict(params), fingerprint
        self.keys = keys.reset_index(drop=True)
        self.dim = int(index.d)
        self.build_seconds = float(build_seconds)
        if int(index.ntotal) != len(self.keys):
            raise IndexFileError(f"index of {index.ntotal} vectors but {len(self.keys)} keys")

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, rows={len(self)}, dim={self.dim}, params={self.params})"

    def __len__(self) -> int:
        return len(self.keys)

    def search_ids(self, queries: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest rows of each query: ``(distances, rows)``, both ``(m, k)``, nearest first; ``distance = 1 -
        cosine``; ``k = min(top, rows)``; an approximate index that finds fewer marks the rest with row ``-1``.

        Raises:
            ValueError: ``top < 1`` or queries of the wrong dimension.
        """
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        q = exact.normalise(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if q.shape[1] != self.dim:
            raise ValueError(f"query has {q.shape[1]} dimensions, the index {self.dim}")
        k = min(int(top), len(self))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(int(self.params["ef_search"]), k)
        elif self.kind == "ivf":
            self.index.nprobe = int(self.params["nprobe"])
        sim, rows = self.index.search(np.ascontiguousarray(q), k)
        return (1.0 - sim).astype(np.float64), rows.astype(np.int64)

    def search(self, query: np.ndarray, top: int = 10) -> pd.DataFrame:
        """The ``top`` rows nearest to one query vector: the table of :func:`nfaudio.embed.search.search`
        (``rank, file, start_s, end_s, distance``)."""
        dist, rows = self.search_ids(np.asarray(query, dtype=np.float32).reshape(1, -1), top)
        found = rows[0] >= 0
        dist, rows = dist[0][found], rows[0][found]
        keys = self.keys.iloc[rows]
        return pd.DataFrame({"rank": np.arange(1, len(rows) + 1), "file": keys["file"].to_numpy(),
                             "start_s": keys["start_s"].to_numpy(dtype=float),
                             "end_s": keys["end_s"].to_numpy(dtype=float), "distance": dist})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index, keys and meta to one ``.npz`` file atomically; returns the path."""
        faiss = require_faiss()
        path = Path(path)
        meta = {"format": FORMAT, "version": VERSION, "kind": self.kind, "params": self.params, "dim": self.dim,
                "rows": len(self), "metric": "cosine (inner product of L2-normalised vectors)",
                "distance": "1 - cosine", "fingerprint": self.fingerprint, "build_seconds": self.build_seconds}
        with atomic_open(path, "wb") as fh:
            np.savez(fh, faiss=faiss.serialize_index(self.index), meta=np.array(json.dumps(meta)),
                     key_file=self.keys["file"].to_numpy(dtype=str),
                     key_start_s=self.keys["start_s"].to_numpy(dtype=float),
                     key_end_s=self.keys["end_s"].to_numpy(dtype=float))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> VectorIndex:
        """Read an index file written by :meth:`save`.

        Raises:
            ImportError: faiss is not installed. IndexFileError: not an nfaudio index file, or another version.
        """
        faiss = require_faiss()
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                blob, keys = z["faiss"], pd.DataFrame({c: z[f"key_{c}"] for c in KEY_COLUMNS})
        except (ValueError, KeyError, OSError) as err:
            raise IndexFileError(f"{path}: not a readable nfaudio index ({err})") from err
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise IndexFileError(f"{path}: not an nfaudio index of version {VERSION} (rebuild it: nfaudio index build)")
        keys["file"] = keys["file"].astype(object)
        return cls(faiss.deserialize_index(blob), meta["kind"], keys, meta["params"], meta["fingerprint"],
                   meta.get("build_seconds", 0.0))


def _params(kind: str, rows: int, m: int, ef_construction: int, ef_search: int, nlist: int | None,
            nprobe: int | None) -> dict[str, Any]:
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {list(INDEX_KINDS)}, got {kind!r}")
    if kind == "hnsw":
        if m < 2 or ef_construction < 1 or ef_search < 1:
            raise ValueError(f"hnsw needs m >= 2, ef_construction >= 1, ef_search >= 1; got {m}, {ef_construction}, "
                             f"{ef_search}")
        return {"m": int(m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
    if kind == "ivf":
        # default: 4 sqrt(N) cells, but at least 39 training rows per cell (faiss's k-means minimum)
        nlist = int(nlist) if nlist else max(1, min(int(round(4 * math.sqrt(rows))), rows // 39))
        if not 1 <= nlist <= max(rows, 1):
            raise ValueError(f"ivf needs 1 <= nlist <= rows ({rows}), got {nlist}")
        nprobe = int(nprobe) if nprobe else max(1, nlist // 16)
        return {"nlist": nlist, "nprobe": min(nprobe, nlist)}
    return {}


def _train_sample(store: EmbeddingStore, n: int, seed: int = 0) -> np.ndarray:
    """About ``n`` normalised rows drawn evenly from every shard (reads the shards once)."""
    rate = min(1.0, n / max(len(store), 1))
    rng = np.random.default_rng(seed)
    parts = [exact.normalise(v["embedding"][rng.random(len(v["embedding"])) < rate])
             for _, v in store.iter_batches()]
    return np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros((0, store.dim), np.float32)


def build_index(store: EmbeddingStore | str | os.PathLike, kind: str = "flat", *, m: int = 32,
                ef_construction: int = 80, ef_search: int = 64, nlist: int | None = None, nprobe: int | None = None,
                threads: int | None = None, save: bool = True) -> VectorIndex:
    """Build an index of ``kind`` over every row of ``store``, shard by shard (memory: the index plus one shard),
    and save it as ``store/index.npz`` (replacing an older one).

    Args:
        store: an :class:`EmbeddingStore` or its folder.
        kind: ``flat`` (exact), ``hnsw`` or ``ivf`` (approximate); see the module docstring.
        m, ef_construction, ef_search: HNSW's links per node, build-time and query-time candidate lists.
        nlist, nprobe: IVF's cells (default ``4 sqrt(rows)``) and cells searched per query (default ``nlist/16``).
        threads: faiss's OpenMP threads (default: the thread policy, :func:`nfaudio.runtime.intra_op_threads`).
        save: write the file (False: in memory only, e.g. for a benchmark).

    Raises:
        ImportError: faiss is not installed. ValueError: an unknown kind or bad parameters, an empty store.
        StoreError: not a readable store.
    """
    from nfaudio.runtime import intra_op_threads

    faiss = require_faiss()
    store = store if isinstance(store, EmbeddingStore) else open_store(store)
    if not len(store):
        raise ValueError(f"{store.root}: the store holds no windows to index")
    if not store.complete:
        log.warning("%s: the store is not complete (an interrupted nfaudio embed); indexing its %d rows",
                    store.root, len(store))
    params = _params(kind, len(store), m, ef_construction, ef_search, nlist, nprobe)
    faiss.omp_set_num_threads(intra_op_threads(threads))
    t0 = time.perf_counter()
    fingerprint = store_fingerprint(store)
    d = store.dim
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()  # the index frees its quantizer
        index.train(_train_sample(store, 64 * params["nlist"]))
    keys = []
    for k, v in store.iter_batches():
        index.add(np.ascontiguousarray(exact.normalise(v["embedding"])))
        keys.append(k)
    seconds = time.perf_counter() - t0
    built = VectorIndex(index, kind, pd.concat(keys, ignore_index=True), params, fingerprint, seconds)
    if save:
        built.save(store.root / INDEX_FILE)
        log.info("%s: %s index of %d rows built in %.2f s", store.root / INDEX_FILE, kind, len(built), seconds)
    return built


def open_index(store: EmbeddingStore | str | os.PathLike, rebuild: bool = False) -> VectorIndex:
    """The index of ``store`` (``store/index.npz``), checked against the store's current fingerprint.

    Args:
        rebuild: rebuild a stale index (same kind and parameters) instead of refusing it.

    Raises:
        MissingIndexError: no index file. StaleIndexError: the store changed since the index was built.
        ImportError: faiss is not installed.
    """
    store = store if isinstance(store, EmbeddingStore) else open_store(store)
    path = store.root / INDEX_FILE
    if not path.is_file():
        raise MissingIndexError(f"{store.root}: no vector index (build one: nfaudio index build {store.root})")
    index = VectorIndex.load(path)
    if index.fingerprint != store_fingerprint(store) or index.dim != store.dim:
        if not rebuild:
            raise StaleIndexError(f"{path} is stale: the store changed after the index was built ({len(index)} rows "
                                  f"indexed, {len(store)} stored); rebuild it: nfaudio index build {store.root}")
        log.info("%s is stale: rebuilding it", path)
        return build_index(store, index.kind, **index.params)
    return index


def search_store(store: EmbeddingStore | str | os.PathLike, query: np.ndarray, top: int = 10,
                 use_index: bool | None = None, rebuild: bool = False) -> pd.DataFrame:
    """The ``top`` windows of ``store`` nearest to ``query`` (the table of :func:`nfaudio.embed.search.search`).

    Args:
        use_index: ``None`` (default): the store's index when one is built and faiss is installed, else the exact
            numpy search; ``True``: the index (errors when missing, stale or faiss is absent); ``False``: numpy.
        rebuild: rebuild a stale index instead of refusing it.

    Raises:
        StaleIndexError: the index is stale (and ``rebuild`` is false), whatever ``use_index``'s default.
        MissingIndexError, ImportError: ``use_index=True`` without an index or without faiss.
    """
    store = store if isinstance(store, EmbeddingStore) else open_store(store)
    have = (store.root / INDEX_FILE).is_file()
    if use_index is None:
        use_index = have and try_faiss() is not None
        if have and not use_index:
            log.warning("faiss is not installed (%s): exact numpy search instead of %s", EXTRA_HINT,
                        store.root / INDEX_FILE)
    if use_index:
        return open_index(store, rebuild=rebuild).search(query, top)
    return exact.search(store, query, top)
