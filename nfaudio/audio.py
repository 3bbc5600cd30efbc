"""Audio I/O and waveform shaping: decode, down-mix, resample, crop/pad and window long recordings.

Pure functions over numpy arrays. Decoding uses soundfile (libsndfile >= 1.1 reads WAV, FLAC,
OGG Vorbis/Opus and MP3); resampling uses soxr at "HQ" quality. Long recordings can be streamed
block by block (``stream_windows``) so memory stays O(block) whatever the file length.

Every problem with a file (missing, empty, not audio, truncated, undecodable, NaN/Inf samples)
raises :class:`AudioError`, which names the file and the cause. Silence is valid audio.

Shapes: a mono signal is ``(T,)``; a multi-channel signal is channels-first ``(C, T)``.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AUDIO_EXTENSIONS", "AudioError", "AudioInfo", "center_crop", "fix_length", "frame_windows", "info",
    "load", "random_crop", "resample", "stream_windows", "to_mono", "window_starts",
]

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
_LAST_POLICIES = ("pad", "drop", "shift")
_PAD_MODES = ("zero", "repeat")
_RESAMPLE_QUALITY = "HQ"
# Errors soundfile/libsndfile raise for unreadable data (LibsndfileError is a RuntimeError subclass).
_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, OSError)
_MP3_PREROLL = 16 * 1152  # MP3 frames decoded and dropped before each read (see _read_at)


class AudioError(Exception):
    """A file that cannot be used as audio. ``str(err)`` names the file and the reason.

    Attributes:
        path: the offending file.
        reason: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(str(path), reason)  # args kept so the error pickles across processes
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class AudioInfo:
    """File metadata read from the header, without decoding the samples.

    ``frames`` (and so ``duration``) can be inexact for MP3/OGG, whose length some encoders
    do not record exactly.
    """

    path: str
    sample_rate: int
    channels: int
    frames: int
    duration: float
    format: str
    subtype: str | None


# ----------------------------------------------------------------------------- file checks
def _check_file(path: Path) -> None:
    """Raise AudioError for a missing, non-regular, empty or truncated (RIFF/WAVE) file."""
    if not path.exists():
        raise AudioError(path, "file not found")
    if not path.is_file():
        raise AudioError(path, "not a regular file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise AudioError(path, "empty file (0 bytes)")
        problem = _wav_truncation(path, size)
    except OSError as err:
        raise AudioError(path, f"cannot read file: {err.strerror or err}") from err
    if problem:
        raise AudioError(path, problem)


def _wav_truncation(path: Path, size: int) -> str | None:
    """Return a message when a RIFF/RIFX WAVE file holds fewer data bytes than its header declares.

    libsndfile silently clamps such files to the bytes present, so a half-copied WAV would
    otherwise load as a shorter recording. RF64 and streamed headers (size 0 / 0xFFFFFFFF) are
    not checked.
    """
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk_id, chunk_len = struct.unpack(endian + "4sI", fh.read(8))
            if chunk_id == b"data":
                if chunk_len in (0, 0xFFFFFFFF):
                    return None
                held = size - pos - 8
                if chunk_len > held:
                    return f"truncated WAV: header declares {chunk_len} data bytes, file holds {held}"
                return None
            pos += 8 + chunk_len + (chunk_len & 1)
    return None


def _reason(err: Exception) -> str:
    """Short cause from a soundfile error (without the path it repeats)."""
    return getattr(err, "error_string", None) or str(err) or type(err).__name__


def _open(path: Path) -> sf.SoundFile:
    _check_file(path)
    try:
        return sf.SoundFile(str(path))
    except (*_DECODE_ERRORS, TypeError) as err:  # TypeError: headerless formats (RAW) need parameters
        raise AudioError(path, f"not readable as audio ({_reason(err)})") from err


def _read_at(f: sf.SoundFile, path: Path, start: int, frames: int, dtype: str) -> np.ndarray:
    """Read ``frames`` frames (-1: to the end) from frame ``start`` as (n, C); NaN/Inf raise.

    A short read at the end of the file is fine (MP3/OGG headers may overstate the length).
    MP3: libsndfile's decoder (mpg123) loses its bit reservoir on every seek, and soundfile seeks
    after every read, so the first frames after a seek come out wrong. Decoding from
    ``_MP3_PREROLL`` frames earlier and dropping them gives the right samples.
    """
    pre = 0
    try:
        if f.format == "MP3":
            pre = min(start, _MP3_PREROLL)
            f.seek(start - pre)
        elif f.tell() != start:
            f.seek(start)
        data = f.read(frames if frames < 0 else frames + pre, dtype=dtype, always_2d=True)[pre:]
    except _DECODE_ERRORS as err:
        raise AudioError(path, f"decoding failed near frame {start} ({_reason(err)})") from err
    if not np.isfinite(data).all():
        raise AudioError(path, f"contains NaN/Inf samples (frames {start}..{start + len(data)})")
    return data


# ----------------------------------------------------------------------------- decode
def info(path: str | os.PathLike) -> AudioInfo:
    """Read metadata (rate, channels, length, format) without decoding the samples.

    Args:
        path: audio file.
    Returns:
        AudioInfo of the file.
    Raises:
        AudioError: missing, empty, truncated WAV, or not a readable audio file.
    """
    p = Path(path)
    _check_file(p)
    try:
        meta = sf.info(str(p))
    except (*_DECODE_ERRORS, TypeError) as err:
        raise AudioError(p, f"not readable as audio ({_reason(err)})") from err
    rate = int(meta.samplerate)
    return AudioInfo(
        path=str(p),
        sample_rate=rate,
        channels=int(meta.channels),
        frames=int(meta.frames),
        duration=float(meta.frames) / rate if rate > 0 else 0.0,
        format=str(meta.format),
        subtype=str(meta.subtype) or None,
    )


def load(
    path: str | os.PathLike,
    sr: int | None = None,
    offset: float = 0.0,
    duration: float | None = None,
    mono: bool = True,
    dtype: str = "float32",
) -> tuple[np.ndarray, int]:
    """Decode a file (or a segment of it), optionally down-mix and resample.

    Only the requested segment is decoded: the file is seeked to ``offset``. A segment running
    past the end of the file is returned short (MP3/OGG lengths in the header may be inexact).

    Args:
        path: audio file.
        sr: target sample rate; None keeps the file's rate.
        offset: start of the segment in seconds (at the file's rate).
        duration: length of the segment in seconds; None reads to the end.
        mono: average the channels to shape (T,); otherwise return (C, T).
        dtype: "float32" or "float64".
    Returns:
        (samples, sample_rate).
    Raises:
        AudioError: missing/empty/not-audio/truncated file, decode error, NaN/Inf samples,
            or a file without any samples.
        ValueError: invalid offset, duration, sr or dtype.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if duration is not None and duration < 0:
        raise ValueError(f"duration must be >= 0 or None, got {duration}")
    if sr is not None and sr <= 0:
        raise ValueError(f"sr must be positive, got {sr}")
    p = Path(path)
    with _open(p) as f:
        file_sr = int(f.samplerate)
        start = min(int(round(offset * file_sr)), f.frames)
        frames = -1 if duration is None else int(round(duration * file_sr))
        data = _read_at(f, p, start, frames, dtype) if frames != 0 else np.zeros((0, f.channels), dtype)
    if start == 0 and frames != 0 and len(data) == 0:
        raise AudioError(p, "contains no audio samples")
    y = np.ascontiguousarray(data.T)  # (C, T)
    if mono:
        y = to_mono(y)
    if sr is not None and sr != file_sr:
        y = resample(y, file_sr, sr)
    return y.astype(dtype, copy=False), (sr or file_sr)


# ----------------------------------------------------------------------------- shaping
def to_mono(y: np.ndarray) -> np.ndarray:
    """Average channels: (C, T) -> (T,); a (T,) input is returned unchanged."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y
    if y.ndim != 2:
        raise ValueError(f"expected (T,) or (C, T), got shape {y.shape}")
    return y.mean(axis=0, dtype=y.dtype if np.issubdtype(y.dtype, np.floating) else np.float32)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample (T,) or (C, T) with soxr ("HQ"); output length is round(T * target_sr / orig_sr).

    Raises:
        ValueError: non-positive rates or a bad shape.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float32)
    if orig_sr == target_sr:
        return y
    if y.ndim == 1:
        return soxr.resample(y, orig_sr, target_sr, quality=_RESAMPLE_QUALITY)
    if y.ndim != 2:
        raise ValueError(f"expected (T,) or (C, T), got shape {y.shape}")
    out = soxr.resample(np.ascontiguousarray(y.T), orig_sr, target_sr, quality=_RESAMPLE_QUALITY)
    return np.ascontiguousarray(out.T)


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
    if last not in _LAST_POLICIES:
        raise ValueError(f"last must be one of {_LAST_POLICIES}, got {last!r}")
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
    if last not in _LAST_POLICIES:
        raise ValueError(f"last must be one of {_LAST_POLICIES}, got {last!r}")
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
