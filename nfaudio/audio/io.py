"""Audio I/O: decode, down-mix and resample recordings, and check files.

Pure functions over numpy arrays. Decoding uses soundfile (libsndfile >= 1.1 reads WAV, FLAC,
OGG Vorbis/Opus and MP3); resampling uses soxr at "HQ" quality. Windows, crops and block streaming of
long recordings are :mod:`nfaudio.audio.windows`.

Every problem with a file (missing, empty, not audio, truncated, undecodable, NaN/Inf samples)
raises :class:`AudioError`, which names the file and the cause. Silence is valid audio.

Shapes: a mono signal is ``(T,)``; a multi-channel signal is channels-first ``(C, T)``.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = ["AUDIO_EXTENSIONS", "AudioError", "AudioInfo", "info", "load", "resample", "to_mono"]

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
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
