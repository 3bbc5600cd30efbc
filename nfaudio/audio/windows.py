"""Windows and crops: the only code that cuts recordings into fixed-length pieces.

Training crops (:func:`read_crop`: random, start or centre, reading only the needed part of a long file),
sliding windows with a last-window policy (:func:`window_starts`, :func:`frame_windows`, and
:func:`stream_windows`, which decodes block by block so memory stays O(block) whatever the file length), and the
time-shifted copies of each window used for test-time augmentation (:func:`shifted_windows`).

Shapes: a mono signal is ``(T,)``; a multi-channel signal is channels-first ``(C, T)``.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import soxr

from nfaudio.audio.io import _RESAMPLE_QUALITY, AudioError, _check_file, _open, _read_at, info, load, to_mono
from nfaudio.choices import CROPS, LAST_POLICIES

__all__ = ["center_crop", "fix_length", "frame_windows", "random_crop", "read_crop", "shifted_windows",
           "stream_windows", "window_starts"]

logger = logging.getLogger(__name__)

_PAD_MODES = ("zero", "repeat")
_RESAMPLE_CONTEXT_S = 0.05  # extra seconds decoded around a crop that gets resampled


def fix_length(y: np.ndarray, length: int, mode: str = "zero", start: int = 0) -> np.ndarray:
    """Crop ``y[..., start:start + length]``; pad at the end when that is short.

    Args:
        y: (T,) or (C, T).
        length: output length in samples.
        mode: "zero" pads with zeros; "repeat" tiles the available segment until ``length``
            (zeros if it is empty).
        start: first sample kept.
    Returns:
        Array with last axis ``length``.
    """
    if length < 0 or start < 0:
        raise ValueError(f"length and start must be >= 0, got length={length}, start={start}")
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {_PAD_MODES}, got {mode!r}")
    y = np.asarray(y)
    seg = y[..., start : start + length]
    missing = length - seg.shape[-1]
    if missing == 0:
        return seg.copy()
    if mode == "repeat" and seg.shape[-1] > 0:
        reps = -(-length // seg.shape[-1])
        return np.concatenate([seg] * reps, axis=-1)[..., :length]
    pad = [(0, 0)] * (y.ndim - 1) + [(0, missing)]
    return np.pad(seg, pad)


def random_crop(y: np.ndarray, length: int, rng: np.random.Generator, pad_mode: str = "zero") -> np.ndarray:
    """Crop a uniformly random ``length``-sample segment; shorter clips are padded (``fix_length``).

    Args:
        y: (T,) or (C, T).
        length: output length.
        rng: source of randomness (e.g. ``np.random.default_rng(seed)``).
        pad_mode: "zero" or "repeat", used when ``y`` is shorter than ``length``.
    """
    n = np.shape(y)[-1]
    start = int(rng.integers(0, n - length + 1)) if n > length else 0
    return fix_length(y, length, mode=pad_mode, start=start)


def center_crop(y: np.ndarray, length: int, pad_mode: str = "zero") -> np.ndarray:
    """Crop the central ``length`` samples; shorter clips are padded at the end (``fix_length``)."""
    n = np.shape(y)[-1]
    return fix_length(y, length, mode=pad_mode, start=max(n - length, 0) // 2)


def read_crop(path: str | os.PathLike, sample_rate: int, duration: float, mode: str = "start",
              rng: np.random.Generator | None = None) -> np.ndarray:
    """A ``duration``-second crop of a file at ``sample_rate``: "random" (uniform start, drawn from ``rng``),
    "start" or "center"; a shorter file is zero-padded at the end.

    A file longer than the crop is read partially (its header, then only the frames needed, with a little context
    on both sides when resampling so the crop's edges match a resample of the whole file).

    Returns:
        float32 ``(round(duration * sample_rate),)``.

    Raises:
        ValueError: unknown mode, or "random" without ``rng``.
        AudioError: the file cannot be read.
    """
    if mode not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {mode!r}")
    if mode == "random" and rng is None:
        raise ValueError("a random crop needs rng")
    num_samples = int(round(duration * sample_rate))
    meta = info(path)
    need = int(math.ceil(duration * meta.sample_rate))  # frames at the file's own rate
    if meta.frames > need:
        if mode == "random":
            start = int(rng.integers(0, meta.frames - need + 1))
        else:
            start = (meta.frames - need) // 2 if mode == "center" else 0
        ctx = int(_RESAMPLE_CONTEXT_S * meta.sample_rate) if meta.sample_rate != sample_rate else 0
        lo, hi = max(start - ctx, 0), min(start + need + ctx, meta.frames)
        y, _ = load(path, sr=sample_rate, offset=lo / meta.sample_rate, duration=(hi - lo) / meta.sample_rate)
        skip = int(round((start - lo) * sample_rate / meta.sample_rate))
        return fix_length(y, num_samples, start=skip)
    y, _ = load(path, sr=sample_rate)
    if mode == "random":
        return random_crop(y, num_samples, rng)
    if mode == "center":
        return center_crop(y, num_samples)
    return fix_length(y, num_samples)


# ----------------------------------------------------------------------------- windows
def window_starts(n_samples: int, window: int, hop: int, last: str = "pad") -> np.ndarray:
    """Start samples of the windows covering ``n_samples`` samples.

    Full windows start at 0, hop, 2*hop, ... while ``start + window <= n_samples``. The rest
    depends on ``last``:

    - "pad": windows continue until the end is covered; the final one is partial (zero-padded).
      A signal shorter than one window gives one window at 0.
    - "drop": only full windows (none when shorter than one window).
    - "shift": a final window is added at ``n_samples - window`` if the full windows miss the end;
      a signal shorter than one window gives one (padded) window at 0.

    An empty signal gives no windows.

    Returns:
        int64 array of starts, increasing.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if last not in LAST_POLICIES:
        raise ValueError(f"last must be one of {LAST_POLICIES}, got {last!r}")
    if n_samples == 0:
        return np.zeros(0, dtype=np.int64)
    n_full = (n_samples - window) // hop + 1 if n_samples >= window else 0
    starts = np.arange(n_full, dtype=np.int64) * hop
    end_missed = n_full == 0 or starts[-1] + window < n_samples
    if last == "pad" and end_missed and n_full * hop < n_samples:
        starts = np.append(starts, n_full * hop)
    elif last == "shift" and end_missed:
        starts = np.append(starts, max(n_samples - window, 0))
    return starts


def frame_windows(y: np.ndarray, window: int, hop: int, last: str = "pad") -> np.ndarray:
    """Cut a mono signal (T,) into windows (N, window) at ``window_starts(T, window, hop, last)``.

    Partial windows are zero-padded. Returns a new array.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"frame_windows expects a mono (T,) signal, got shape {y.shape}")
    starts = window_starts(len(y), window, hop, last)
    if len(starts) == 0:
        return np.zeros((0, window), dtype=y.dtype)
    padded = np.pad(y, (0, max(int(starts[-1]) + window - len(y), 0)))
    return padded[starts[:, None] + np.arange(window)]


def stream_windows(
    path: str | os.PathLike,
    sr: int,
    window_s: float,
    hop_s: float | None = None,
    last: str = "pad",
    block_s: float = 60.0,
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Yield windows of a long file, decoding and resampling it block by block.

    Memory stays O(block_s + window_s). Windows equal ``frame_windows(load(path, sr)[0], ...)``
    exactly without resampling, and up to float rounding with it (soxr's streaming resampler
    gives the same output as the one-shot one).

    Args:
        path: audio file (down-mixed to mono).
        sr: sample rate of the yielded windows.
        window_s: window length in seconds.
        hop_s: hop in seconds (default ``window_s``).
        last: last-window policy, see ``window_starts``.
        block_s: seconds of audio decoded per read.
    Yields:
        (start_s, end_s, window) with window float32 (round(window_s * sr),) and
        ``end_s = start_s + window_s`` (the nominal end, also for a padded last window).
    Raises:
        ValueError: non-positive window, hop or block.
        AudioError: as ``load``; missing/empty/truncated-WAV files at the call, decode errors
            (truncated FLAC, NaN) when the iteration reaches them.
    """
    hop_s = window_s if hop_s is None else hop_s
    window, hop = int(round(window_s * sr)), int(round(hop_s * sr))
    if window <= 0 or hop <= 0 or block_s <= 0:
        raise ValueError(f"window_s, hop_s and block_s must give positive lengths at sr={sr}")
    if last not in LAST_POLICIES:
        raise ValueError(f"last must be one of {LAST_POLICIES}, got {last!r}")
    p = Path(path)
    _check_file(p)  # fail at the call for a missing/empty file; decoding starts on iteration
    return _stream_windows(p, sr, window, hop, window_s, last, block_s)


def _stream_windows(
    p: Path, sr: int, window: int, hop: int, window_s: float, last: str, block_s: float
) -> Iterator[tuple[float, float, np.ndarray]]:
    with _open(p) as f:
        file_sr = int(f.samplerate)
        block = max(int(round(block_s * file_sr)), 1)
        stream = None if file_sr == sr else soxr.ResampleStream(file_sr, sr, 1, "float32", _RESAMPLE_QUALITY)
        buf = np.zeros(0, dtype=np.float32)
        buf_start = 0  # absolute index (at sr) of buf[0]
        n_yielded = 0
        pos = 0  # next frame to read (at the file's rate)
        done = False
        while not done:
            data = _read_at(f, p, pos, block, "float32")
            pos += len(data)
            done = len(data) == 0
            chunk = to_mono(np.ascontiguousarray(data.T))
            if stream is not None:
                chunk = stream.resample_chunk(chunk, last=done)
            buf = np.concatenate([buf, chunk]) if len(buf) else chunk
            # full windows available so far
            while n_yielded * hop + window <= buf_start + len(buf):
                s = n_yielded * hop - buf_start
                yield n_yielded * hop / sr, n_yielded * hop / sr + window_s, buf[s : s + window].copy()
                n_yielded += 1
            # keep what the next window, or a final shifted window, can still need
            keep_from = min(n_yielded * hop, max(buf_start + len(buf) - window, 0))
            if keep_from > buf_start:
                buf = buf[keep_from - buf_start :]
                buf_start = keep_from
    n_total = buf_start + len(buf)
    if n_total == 0:
        raise AudioError(p, "contains no audio samples")
    logger.debug("streamed %s: %d samples at %d Hz, %d full windows", p, n_total, sr, n_yielded)
    for start in window_starts(n_total, window, hop, last)[n_yielded:]:
        seg = buf[int(start) - buf_start : int(start) - buf_start + window]
        yield int(start) / sr, int(start) / sr + window_s, np.pad(seg, (0, window - len(seg)))


def shifted_windows(stream: Iterator[tuple[float, float, np.ndarray]], sample_rate: int, shifts: Sequence[int]
                    ) -> Iterator[tuple[float, float, np.ndarray]]:
    """Time-shifted copies of each window of ``stream`` (test-time augmentation).

    Each window is yielded with the windows shifted by ``shifts`` samples, cut from the previous, current and next
    window of the stream (zeros before the start of the file and past its end), so ``|shift| <= hop <= window``.

    Args:
        stream: ``(start_s, end_s, window (T,))`` as from :func:`stream_windows`.
        sample_rate: the windows' sample rate.
        shifts: shifts in samples, e.g. ``(0, -8000, 8000)``.

    Yields:
        ``(start_s, end_s, windows (len(shifts), T))``.
    """
    sr = sample_rate
    lo, hi = min(min(shifts), 0), max(max(shifts), 0)
    prev = cur = None
    for nxt in itertools.chain(stream, [None]):
        if cur is not None:
            size = len(cur[2])
            origin = int(round(cur[0] * sr)) + lo  # absolute sample index of span[0]
            span = np.zeros(size + hi - lo, dtype=np.float32)
            for item in (prev, cur, nxt):  # overlaps agree; padding only lies past the end of the file
                if item is not None:
                    a = int(round(item[0] * sr)) - origin
                    i0, i1 = max(0, -a), min(size, len(span) - a)
                    if i1 > i0:
                        span[a + i0:a + i1] = item[2][i0:i1]
            yield cur[0], cur[1], np.stack([span[s - lo:s - lo + size] for s in shifts])
        prev, cur = cur, nxt
