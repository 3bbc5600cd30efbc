"""A query's embedding: one vector for a stretch of one recording, comparable with an embedding store's rows.

:func:`embed_query` reads only the asked segment (seeking into the file; with resampling, a little context on both
sides so the samples match those of a whole-file decode) and embeds it with the predictor that made the store, so
the query ``[start_s, end_s)`` of a store's window gives that row's vector (up to float rounding).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from nfaudio.audio import frame_windows, info, load
from nfaudio.runtime import torch_threads

if TYPE_CHECKING:  # type names only
    from nfaudio.predict import Predictor

__all__ = ["embed_query", "query_windows"]

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
