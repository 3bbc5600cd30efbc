"""Exact nearest-window search on an embedding store (:mod:`nfaudio.embed.store`).

Metric: cosine similarity, i.e. the inner product of L2-normalised embeddings; ``distance = 1 - cosine``
(0 for the same direction, 2 for the opposite). The search is a brute-force matrix product in numpy, exact;
:mod:`nfaudio.embed.index` builds a faiss index with the same metric and the same hits table (``nfaudio index
build``), and :func:`nfaudio.embed.index.search_store` picks the index when one is built.

A query is a vector or a window already in the store (:func:`stored_query`). A query from audio is one call
to the model's embedding of that window (the ``embed_query`` function of ``nfaudio embed``), then
:func:`search`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from nfaudio.embed.store import EmbeddingStore, StoreError
from nfaudio.fileio import write_csv

__all__ = ["HIT_COLUMNS", "hits_to_raven", "normalise", "search", "stored_query", "write_hits"]

HIT_COLUMNS = ("rank", "file", "start_s", "end_s", "distance")


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def stored_query(store: EmbeddingStore, file: str, start_s: float) -> np.ndarray:
    """The stored embedding of the window of ``file`` starting at ``start_s`` (seconds, to 1 ms).

    Raises:
        StoreError: no such window in the store.
    """
    keys = store.keys()
    hit = np.flatnonzero((keys["file"].to_numpy() == str(file))
                         & (np.abs(keys["start_s"].to_numpy(dtype=float) - float(start_s)) < 1e-3))
    if not len(hit):
        raise StoreError(f"{store.root}: no stored window of {file} starting at {start_s} s")
    return store.embeddings()[hit[0]]


def search(store: EmbeddingStore, query: np.ndarray, top: int = 10) -> pd.DataFrame:
    """The ``top`` stored windows nearest to ``query`` by cosine, nearest first.

    Returns:
        a DataFrame with columns :data:`HIT_COLUMNS` (``rank`` from 1).

    Raises:
        ValueError: ``top < 1`` or a query of the wrong dimension.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    emb = store.embeddings()
    q = normalise(np.asarray(query, dtype=np.float32).reshape(-1))
    if q.shape[0] != emb.shape[1]:
        raise ValueError(f"query has {q.shape[0]} dimensions, the store {emb.shape[1]}")
    sim = normalise(emb) @ q
    k = min(top, len(sim))
    order = np.argsort(-sim, kind="stable")[:k]
    keys = store.keys().iloc[order]
    return pd.DataFrame({"rank": np.arange(1, k + 1), "file": keys["file"].to_numpy(),
                         "start_s": keys["start_s"].to_numpy(dtype=float),
                         "end_s": keys["end_s"].to_numpy(dtype=float),
                         "distance": (1.0 - sim[order]).astype(np.float64)})


def hits_to_raven(hits: pd.DataFrame) -> pd.DataFrame:
    """A Raven selection table of the hits (``Species`` = ``hit<rank>``, ``Confidence`` = 1 - distance)."""
    from nfaudio.formats import to_raven

    det = pd.DataFrame({"file": hits["file"], "start_s": hits["start_s"], "end_s": hits["end_s"],
                        "label": [f"hit{r}" for r in hits["rank"]], "score": 1.0 - hits["distance"]})
    files = list(dict.fromkeys(hits["file"]))
    offsets = None if len(files) <= 1 else {f: 0.0 for f in files}
    return to_raven(det, offsets=offsets)


def write_hits(hits: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """Write ``out/hits.csv`` and ``out/hits.selections.txt`` (Raven, tab-separated) atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(hits, out / "hits.csv")
    write_csv(hits_to_raven(hits), out / "hits.selections.txt", sep="\t")
    return [out / "hits.csv", out / "hits.selections.txt"]
