"""A query's embedding: one vector for a stretch of one recording, comparable with an embedding store's rows.

:func:`embed_query` reads only the asked segment (seeking into the file; with resampling, a little context on both
sides so the samples match those of a whole-file decode) and embeds it with the predictor that made the store, so
the query ``[start_s, end_s)`` of a store's window gives that row's vector (up to float rounding).
:func:`store_predictor` rebuilds that predictor from what the store recorded (models, backend, window, hop).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nfaudio.audio import frame_windows, info, load
from nfaudio.embed.store import EmbeddingStore, StoreError
from nfaudio.runtime import torch_threads

if TYPE_CHECKING:  # type names only
    from nfaudio.predict import Predictor

__all__ = ["embed_query", "query_windows", "store_predictor"]

log = logging.getLogger(__name__)

_CONTEXT_S = 0.05  # seconds decoded around the segment when it is resampled


def query_windows(predictor: Predictor, path: str | os.PathLike, start: float | None = None,
                  end: float | None = None) -> np.ndarray:
    """The predictor's windows over ``[start, end)`` of ``path``, float32 ``(n, window samples)``.

    ``start`` defaults to 0 and ``end`` to ``start + window``. A segment of one window or less (or one running past
    the end of the file) is one window, zero-padded at the end, as a store's last window; a longer one is covered by
    windows ``hop`` apart plus one ending at ``end`` (the "shift" policy).

    Raises:
        ValueError: ``start < 0`` or ``end <= start``.
        nfaudio.audio.AudioError: the file cannot be read.
    """
    start = 0.0 if start is None else float(start)
    end = start + predictor.window if end is None else float(end)
    if start < 0 or end <= start:
        raise ValueError(f"a query needs 0 <= start < end, got start {start} and end {end}")
    sr = predictor.sample_rate
    ctx = _CONTEXT_S if info(path).sample_rate != sr else 0.0
    lo = max(start - ctx, 0.0)
    y, _ = load(path, sr=sr, offset=lo, duration=end - lo + ctx)
    skip = int(round((start - lo) * sr))
    segment = y[skip:skip + int(round((end - start) * sr))]
    window, hop = int(round(predictor.window * sr)), int(round(predictor.hop * sr))
    if len(segment) == 0:
        raise ValueError(f"{path}: the query starts at {start:g} s, after the end of the recording")
    return frame_windows(segment, window, hop, last="shift").astype(np.float32, copy=False)


def embed_query(predictor: Predictor, path: str | os.PathLike, start: float | None = None, end: float | None = None,
                fold_mode: str = "mean") -> np.ndarray:
    """The embedding of ``[start, end)`` of ``path``: float32 ``(D,)``, the mean over :func:`query_windows`' windows
    (one window: exactly that window's embedding, the store row of a window starting at ``start``).

    Args:
        predictor: the predictor that made the store (same models, backend and window).
        path: the recording (e.g. the query clip of ``nfaudio search QUERY.wav``).
        start, end: seconds (default: the first window).
        fold_mode: as the store's (``store.info["fold_mode"]``).

    Raises:
        ValueError: a bad segment, an unknown fold mode, an ONNX model without the embedding output.
        nfaudio.audio.AudioError: the file cannot be read.
    """
    waves = query_windows(predictor, path, start, end)
    bs = predictor.batch_size
    with torch_threads(predictor.threads):
        emb = np.concatenate([predictor.scorer.embed(waves[i:i + bs], fold_mode)[0] for i in range(0, len(waves), bs)])
    return emb.mean(axis=0, dtype=np.float64).astype(np.float32)


def _store_model(store: EmbeddingStore) -> Path:
    """The model path that gives the store's models again: the one file, or the folder of a CV run's folds."""
    from nfaudio.rundir import find_checkpoints

    paths = [Path(m["path"]) for m in store.info.get("models", [])]
    if len(paths) == 1:
        return paths[0]
    if paths:
        parent = Path(os.path.commonpath([str(p.parent) for p in paths]))
        for run in (parent, parent.parent):
            try:
                if [p.resolve() for p in find_checkpoints(run)] == [p.resolve() for p in paths]:
                    return run
            except FileNotFoundError:
                continue
    raise StoreError(f"{store.root}: cannot tell which model made the store's embeddings; pass the model (--model)")


def store_predictor(store: EmbeddingStore, model: str | os.PathLike | None = None, **overrides: Any) -> Predictor:
    """The predictor that made ``store``: its models (from ``store.info``, or ``model``), backend, window, hop,
    last-window policy and batch size, so :func:`embed_query` gives vectors comparable with the store's rows.

    Args:
        model: another path to the same models (e.g. the run was moved); default: the paths the store recorded.
        **overrides: other :meth:`Predictor.from_checkpoint` arguments (``device``, ``threads`` ...).

    Raises:
        StoreError: the store does not record its models and no ``model`` is given, or the models' sample rate
            differs from the store's.
        FileNotFoundError: the model is gone.
    """
    from nfaudio.predict import Predictor

    meta = store.info
    backend, _, precision = str(meta.get("backend", "torch")).partition("-")
    kwargs: dict[str, Any] = {"backend": backend, "precision": precision or "fp32", "num_workers": 0}
    for key in ("window", "hop", "last", "batch_size", "min_duration"):
        if meta.get(key) is not None:
            kwargs[key] = meta[key]
    predictor = Predictor.from_checkpoint(model if model is not None else _store_model(store),
                                          **{**kwargs, **overrides})
    if meta.get("sample_rate") not in (None, predictor.sample_rate):
        raise StoreError(f"{store.root}: embeddings made at {meta['sample_rate']} Hz, the model runs at "
                         f"{predictor.sample_rate} Hz")
    if meta.get("models") and predictor.fingerprint()["models"] != meta["models"]:
        log.warning("%s: the model files differ from those that made the store (changed or moved since); the "
                    "query's embedding is comparable only if they are the same models", store.root)
    return predictor
