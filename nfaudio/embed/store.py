"""The embedding store: per-window embeddings of an archive, on disk as columnar parquet shards.

One store is a folder::

    DIR/embeddings.json          what the store holds (below); rewritten atomically after every shard
    DIR/shards/part-00000.parquet
    DIR/shards/part-00001.parquet ...

Every shard has the columns ``file`` (string: the recording's path), ``start_s``, ``end_s`` (float64 seconds),
``embedding`` (fixed-size list of ``dim`` float32) and, when the store was written with class scores, one
float32 column per class named by the class. A file's windows are never split across shards, in window order;
rows are numbered in shard order, then row order (the row number is what a vector index stores).

``embeddings.json``: ``{"format": "nfaudio-embeddings", "version": 1, "dim": D, "classes": [...] (empty without
scores), "info": {...} (who made it: models, aggregation, window, hop, sample rate ...), "shards": [{"name",
"rows", "files"}, ...], "rows": N, "complete": bool}``. A shard exists for readers only once it is listed there,
so a job killed while writing leaves a store that reads as the shards finished before the kill; reopening it for
writing (``resume=True``) deletes the unlisted leftovers and tells which files are done (:meth:`StoreWriter.done`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfaudio.fileio import atomic_path, write_json

__all__ = ["KEY_COLUMNS", "EmbeddingStore", "StoreConflictError", "StoreError", "StoreWriter", "open_store"]

log = logging.getLogger(__name__)

FORMAT = "nfaudio-embeddings"
VERSION = 1
META = "embeddings.json"
SHARDS = "shards"
KEY_COLUMNS = ("file", "start_s", "end_s")
_RESERVED = (*KEY_COLUMNS, "embedding")


class StoreError(ValueError):
    """A folder that is not a readable embedding store, or data that does not fit one."""


class StoreConflictError(StoreError):
    """A store reopened for writing holds embeddings of another kind (dimension, classes or settings)."""


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("embedding stores need pyarrow (pip install 'nfaudio[parquet]')") from err
    return pa, pq


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / META
    if not path.is_file():
        raise StoreError(f"{root}: not an embedding store (no {META})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: unreadable ({err})") from err
    if meta.get("format") != FORMAT:
        raise StoreError(f"{path}: not an nfaudio embedding store (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise StoreError(f"{path}: store version {meta.get('version')} (this nfaudio reads version {VERSION})")
    return meta


def _check_classes(classes: Sequence[str]) -> list[str]:
    classes = [str(c) for c in classes]
    clash = sorted(set(classes) & set(_RESERVED))
    if clash:
        raise StoreError(f"class names {clash} clash with the store's own columns {list(_RESERVED)}")
    if len(set(classes)) != len(classes):
        raise StoreError("duplicate class names")
    return classes


class EmbeddingStore:
    """Read a store written by :class:`StoreWriter` (see the module docstring).

    Attributes:
        root: the folder. dim: embedding size. classes: the score columns' classes (empty: no scores).
        info: what the writer recorded about how the embeddings were made. num_rows: windows in the store.
        complete: whether the writer finished.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        meta = _read_meta(self.root)
        self.dim = int(meta["dim"])
        self.classes = list(meta.get("classes", []))
        self.info = dict(meta.get("info", {}))
        self.complete = bool(meta.get("complete", False))
        self.shards = [self.root / s["name"] for s in meta["shards"]]
        self.num_rows = int(sum(s["rows"] for s in meta["shards"]))
        missing = [p for p in self.shards if not p.is_file()]
        if missing:
            raise StoreError(f"{self.root}: listed shard {missing[0]} is missing")

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.root)!r}, rows={self.num_rows}, dim={self.dim}, classes={len(self.classes)})"

    def __len__(self) -> int:
        return self.num_rows

    def iter_batches(self, columns: Sequence[str] = ("embedding",)) -> Iterator[tuple[pd.DataFrame, dict[str, Any]]]:
        """Shard by shard (memory bounded by one shard): ``(keys, values)`` with ``keys`` a DataFrame of
        ``file, start_s, end_s`` and ``values`` a dict holding the asked ``columns``: ``"embedding"`` as a float32
        ``(n, dim)`` array, ``"scores"`` as a float32 ``(n, classes)`` array."""
        _, pq = _pyarrow()
        wanted = list(KEY_COLUMNS)
        if "embedding" in columns:
            wanted.append("embedding")
        if "scores" in columns:
            if not self.classes:
                raise StoreError(f"{self.root}: the store holds no class scores")
            wanted += self.classes
        for path in self.shards:
            table = pq.read_table(path, columns=wanted)
            keys = table.select(list(KEY_COLUMNS)).to_pandas()
            values: dict[str, Any] = {}
            if "embedding" in columns:
                flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                values["embedding"] = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, self.dim)
            if "scores" in columns:
                values["scores"] = np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in self.classes],
                                            axis=1).astype(np.float32, copy=False)
            yield keys, values

    def keys(self) -> pd.DataFrame:
        """Every window's ``file, start_s, end_s``, in row order."""
        parts = [k for k, _ in self.iter_batches(columns=())]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(KEY_COLUMNS))

    def embeddings(self) -> np.ndarray:
        """All embeddings as one float32 ``(num_rows, dim)`` array (row order)."""
        parts = [v["embedding"] for _, v in self.iter_batches()]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def scores(self) -> pd.DataFrame:
        """The stored class scores, indexed by ``(file, start_s, end_s)`` (as :meth:`Predictor.predict`)."""
        frames = []
        for keys, v in self.iter_batches(columns=("scores",)):
            frames.append(pd.concat([keys, pd.DataFrame(v["scores"], columns=self.classes)], axis=1))
        if not frames:
            return pd.DataFrame(columns=[*KEY_COLUMNS, *self.classes]).set_index(list(KEY_COLUMNS))
        return pd.concat(frames, ignore_index=True).set_index(list(KEY_COLUMNS))

    def files(self) -> list[str]:
        """The recordings in the store, in row order, once each."""
        return list(dict.fromkeys(self.keys()["file"]))


def open_store(root: str | os.PathLike) -> EmbeddingStore:
    """Open an embedding store for reading.

    Raises:
        StoreError: not a store, an unreadable or newer-format ``embeddings.json``, or a listed shard missing.
    """
    return EmbeddingStore(root)


class StoreWriter:
    """Write a store file by file; a shard is written whenever ``shard_rows`` windows are buffered.

    Args:
        root: the store folder (created).
        dim: embedding size.
        classes: class names of the score columns, or ``()`` for embeddings only.
        info: JSON-serialisable settings that made the embeddings (models, aggregation, window ...); a resumed
            store must have been made with equal ``dim``, ``classes`` and ``info``.
        shard_rows: windows per shard (a file's windows stay together, so a shard may hold more).
        resume: keep an existing store's finished shards (and delete what a killed writer left unlisted)
            instead of refusing to touch it.

    Raises:
        StoreConflictError: ``resume`` with a store of another dimension, classes or info.
        StoreError: the folder already holds a store and ``resume`` is false.
    """

    def __init__(self, root: str | os.PathLike, dim: int, classes: Sequence[str] = (),
                 info: Mapping[str, Any] | None = None, shard_rows: int = 65536, resume: bool = False) -> None:
        if dim < 1:
            raise StoreError(f"embedding dimension must be >= 1, got {dim}")
        if shard_rows < 1:
            raise StoreError(f"shard_rows must be >= 1, got {shard_rows}")
        self.root = Path(root)
        self.dim = int(dim)
        self.classes = _check_classes(classes)
        self.info = json.loads(json.dumps(dict(info or {})))  # as it will read back
        self.shard_rows = int(shard_rows)
        self._shards: list[dict[str, Any]] = []
        self._done: set[str] = set()
        self._buffer: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._buffered = 0
        if (self.root / META).exists():
            if not resume:
                raise StoreError(f"{self.root} already holds an embedding store (resume it, or choose another folder)")
            self._reopen()
        (self.root / SHARDS).mkdir(parents=True, exist_ok=True)
        self._write_meta(complete=False)

    def _reopen(self) -> None:
        meta = _read_meta(self.root)
        theirs = (int(meta["dim"]), list(meta.get("classes", [])), meta.get("info", {}))
        if theirs != (self.dim, self.classes, self.info):
            what = [n for n, a, b in zip(("dim", "classes", "info"), theirs, (self.dim, self.classes, self.info))
                    if a != b]
            raise StoreConflictError(f"{self.root} holds embeddings made with other settings ({', '.join(what)} "
                                     "differ); use another folder or delete it")
        self._shards = list(meta["shards"])
        listed = {s["name"] for s in self._shards}
        for leftover in sorted((self.root / SHARDS).glob("*")):
            name = f"{SHARDS}/{leftover.name}"
            if name not in listed:
                log.info("removing %s, left unfinished by an interrupted writer", leftover)
                leftover.unlink()
        _, pq = _pyarrow()
        for s in self._shards:
            files = pq.read_table(self.root / s["name"], columns=["file"]).column("file").to_pylist()
            self._done.update(files)

    @property
    def done(self) -> frozenset[str]:
        """Files whose windows are in a finished shard (a resumed job skips them)."""
        return frozenset(self._done)

    def add(self, file: str, start_s: Any, end_s: Any, embedding: np.ndarray, scores: np.ndarray | None = None,
            ) -> list[str]:
        """Buffer one file's windows; returns the files that just reached disk (empty unless a shard was written).

        Raises:
            StoreError: shapes that do not fit (``embedding`` not ``(n, dim)``, times or scores not ``n`` rows,
                scores missing or present against the store's classes), or a file added twice.
        """
        file = str(file)
        emb = np.asarray(embedding, dtype=np.float32)
        start = np.asarray(start_s, dtype=np.float64).reshape(-1)
        end = np.asarray(end_s, dtype=np.float64).reshape(-1)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise StoreError(f"{file}: embeddings of shape {emb.shape}, expected (windows, {self.dim})")
        if len(start) != len(emb) or len(end) != len(emb):
            raise StoreError(f"{file}: {len(emb)} embeddings but {len(start)} start and {len(end)} end times")
        if bool(self.classes) != (scores is not None):
            raise StoreError(f"{file}: the store {'needs' if self.classes else 'takes no'} class scores")
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float32)
            if scores.shape != (len(emb), len(self.classes)):
                raise StoreError(f"{file}: scores of shape {scores.shape}, expected ({len(emb)}, {len(self.classes)})")
        if file in self._done or any(b[0] == file for b in self._buffer):
            raise StoreError(f"{file}: already in the store")
        self._buffer.append((file, start, end, emb, scores))
        self._buffered += len(emb)
        return self.flush() if self._buffered >= self.shard_rows else []

    def flush(self) -> list[str]:
        """Write the buffered files as one shard (nothing when empty); returns the files written."""
        if not self._buffer:
            return []
        pa, pq = _pyarrow()
        files = [b[0] for b in self._buffer]
        n = [len(b[3]) for b in self._buffer]
        emb = np.concatenate([b[3] for b in self._buffer]).reshape(-1)
        columns: dict[str, Any] = {
            "file": pa.array(np.repeat(np.array(files, dtype=object), n), pa.string()),
            "start_s": pa.array(np.concatenate([b[1] for b in self._buffer]), pa.float64()),
            "end_s": pa.array(np.concatenate([b[2] for b in self._buffer]), pa.float64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb, pa.float32()), self.dim),
        }
        if self.classes:
            scores = np.concatenate([b[4] for b in self._buffer])
            for i, c in enumerate(self.classes):
                columns[c] = pa.array(scores[:, i], pa.float32())
        name = f"{SHARDS}/part-{len(self._shards):05d}.parquet"
        with atomic_path(self.root / name) as tmp:
            pq.write_table(pa.table(columns), tmp)
        self._shards.append({"name": name, "rows": int(sum(n)), "files": len(files)})
        self._done.update(files)
        self._buffer, self._buffered = [], 0
        self._write_meta(complete=False)  # the shard counts from here on
        return files

    def close(self, complete: bool = True) -> EmbeddingStore:
        """Flush, mark the store complete (or not, for a job stopped early) and open it for reading."""
        self.flush()
        self._write_meta(complete=complete)
        return EmbeddingStore(self.root)

    def _write_meta(self, complete: bool) -> None:
        write_json(self.root / META, {
            "format": FORMAT, "version": VERSION, "dim": self.dim, "classes": self.classes, "info": self.info,
            "shards": self._shards, "rows": int(sum(s["rows"] for s in self._shards)), "complete": complete,
        })
