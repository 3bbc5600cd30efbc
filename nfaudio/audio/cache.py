"""A decoded-audio cache for training: each file is decoded and resampled once, random crops are read from it.

Training from compressed audio (MP3/OGG at 44.1/48 kHz) is decode-bound: without a cache every epoch decodes
and resamples every crop again. :class:`DecodedCache` keeps each file's whole signal at the recipe's rate:

- ``"disk"``: one ``<dir>/<key>.npy`` per file, ``key = sha1(abspath, size, mtime_ns, sample_rate)``; read with
  ``np.load(mmap_mode="r")`` so a crop reads only its own pages (the page cache is shared by every worker, DDP
  rank and parallel fold). A file is written to a unique temporary name and renamed into place, so concurrent
  writers of one key (two workers, two ranks) each write the same bytes and a reader never sees a partial file.
  Touching or replacing the source changes its key, so a stale entry is never read (it is rebuilt under the new
  key; old entries stay until the folder is deleted).
- ``"memory"``: the signals live in this process. :meth:`DecodedCache.fill` decodes them (threads) in the main
  process before the DataLoader starts its workers; forked workers then share the pages copy-on-write (numpy
  data buffers are not touched by reference counting). A worker that meets a file not filled decodes it into its
  own copy. With the ``spawn`` start method each worker receives a pickled copy: prefer ``"disk"`` there, and
  for data sets larger than memory.

Each entry is a float32 array: 4 header slots holding two int64 (the file's own sample rate and its
``audio.info`` frame count), then the samples. The crop draws its start exactly as
:func:`nfaudio.audio.read_crop` does (in frames of the file's own rate, from the same generator), so without
resampling a cached crop equals ``read_crop``'s bit for bit. With resampling the start maps to
``round(start * sr / file_sr)`` of the whole-file resample, whereas ``read_crop`` resamples a piece decoded from
``start - 50 ms``: the two agree to resampler rounding (about 1e-6 away from the edges) when ``start * sr / file_sr``
is whole, and otherwise differ by the fractional-sample offset of that piece (at most half a sample).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nfaudio.audio.io import info, load
from nfaudio.audio.windows import center_crop, fix_length, random_crop
from nfaudio.choices import CACHE_MODES, CROPS

__all__ = ["CACHE_MODES", "DecodedCache", "cache_key", "default_cache_dir"]

logger = logging.getLogger(__name__)

_HEADER = 4  # float32 slots holding (file sample rate, frames) as two int64


def default_cache_dir() -> Path:
    """``$NFAUDIO_CACHE_DIR``, else ``$XDG_CACHE_HOME/nfaudio/decoded`` (``~/.cache/nfaudio/decoded``)."""
    if os.environ.get("NFAUDIO_CACHE_DIR"):
        return Path(os.environ["NFAUDIO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nfaudio" / "decoded"


def cache_key(path: str | os.PathLike, sample_rate: int) -> str:
    """``sha1`` of the absolute path, size, modification time (ns) and the output sample rate.

    Raises:
        OSError: the file cannot be stat'ed.
    """
    p = os.path.abspath(os.fspath(path))
    st = os.stat(p)
    return hashlib.sha1(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{int(sample_rate)}".encode()).hexdigest()


def _pack(y: np.ndarray, file_sr: int, frames: int) -> np.ndarray:
    out = np.empty(_HEADER + len(y), dtype=np.float32)
    out[:_HEADER].view(np.int64)[:] = (file_sr, frames)
    out[_HEADER:] = y
    return out


def _unpack(entry: np.ndarray) -> tuple[int, int, np.ndarray]:
    file_sr, frames = (int(v) for v in np.asarray(entry[:_HEADER]).view(np.int64))
    return file_sr, frames, entry[_HEADER:]


class DecodedCache:
    """Whole decoded signals at ``sample_rate``, kept in memory or on disk; crops as :func:`~nfaudio.audio.read_crop`.

    Holds only its settings (and, for ``"memory"``, the filled arrays), so it pickles into DataLoader workers.

    Args:
        mode: ``"memory"`` or ``"disk"`` (``"none"`` is no cache: don't build one).
        sample_rate: output rate of the cached signals.
        cache_dir: folder of a disk cache (default :func:`default_cache_dir`); created when needed.

    Raises:
        ValueError: unknown mode or a non-positive rate.
    """

    def __init__(self, mode: str, sample_rate: int, cache_dir: str | os.PathLike | None = None) -> None:
        if mode not in ("memory", "disk"):
            raise ValueError(f"cache mode must be 'memory' or 'disk', got {mode!r}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.mode, self.sample_rate = mode, int(sample_rate)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._memory: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        where = f", cache_dir='{self.cache_dir}'" if self.mode == "disk" else f", {len(self._memory)} files"
        return f"DecodedCache(mode='{self.mode}', sample_rate={self.sample_rate}{where})"

    def entry_path(self, path: str | os.PathLike) -> Path:
        """Where the disk entry of ``path`` lives (its key changes when the file does)."""
        return self.cache_dir / f"{cache_key(path, self.sample_rate)}.npy"

    def _decode(self, path: str | os.PathLike) -> np.ndarray:
        meta = info(path)
        y, _ = load(path, sr=self.sample_rate)
        return _pack(np.asarray(y, dtype=np.float32), meta.sample_rate, meta.frames)

    def _write(self, target: Path, entry: np.ndarray) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".nfaudio-tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, entry)
            os.replace(tmp, target)  # atomic: readers see the old state or the whole file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get(self, path: str | os.PathLike) -> tuple[int, int, np.ndarray]:
        """``(file_sample_rate, file_frames, signal)`` of ``path``, decoding it on a miss.

        The signal is read-only (a memory map for ``"disk"``). Raises :class:`~nfaudio.audio.AudioError` for an
        unreadable file, OSError for a missing one.
        """
        if self.mode == "memory":
            key = os.path.abspath(os.fspath(path))
            if key not in self._memory:
                self._memory[key] = self._decode(path)
            return _unpack(self._memory[key])
        target = self.entry_path(path)
        try:
            return _unpack(np.load(target, mmap_mode="r"))
        except FileNotFoundError:
            pass
        entry = self._decode(path)
        self._write(target, entry)
        return _unpack(entry)

    def fill(self, paths: Iterable[str | os.PathLike], workers: int = 1) -> int:
        """Decode every file not cached yet (``workers`` threads); returns how many were decoded."""
        todo = []
        for p in dict.fromkeys(os.fspath(p) for p in paths):
            cached = (os.path.abspath(p) in self._memory if self.mode == "memory"
                      else self.entry_path(p).is_file())
            if not cached:
                todo.append(p)
        if not todo:
            return 0
        logger.info("decoding %d files into the %s cache at %d Hz", len(todo), self.mode, self.sample_rate)
        if workers > 1 and len(todo) > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(self.get, todo))
        else:
            for p in todo:
                self.get(p)
        return len(todo)

    def read_crop(self, path: str | os.PathLike, duration: float, mode: str = "start",
                  rng: np.random.Generator | None = None) -> np.ndarray:
        """:func:`nfaudio.audio.read_crop` ``(path, self.sample_rate, duration, mode, rng)`` from the cache: the same
        generator draws, the same length and padding (see the module docstring for the resampled case).

        Raises:
            ValueError: unknown mode, or "random" without ``rng``.
        """
        if mode not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {mode!r}")
        if mode == "random" and rng is None:
            raise ValueError("a random crop needs rng")
        sr = self.sample_rate
        num_samples = int(round(duration * sr))
        file_sr, frames, y = self.get(path)
        need = int(math.ceil(duration * file_sr))
        if frames > need:
            if mode == "random":
                start = int(rng.integers(0, frames - need + 1))
            else:
                start = (frames - need) // 2 if mode == "center" else 0
            skip = start if file_sr == sr else int(round(start * sr / file_sr))
            return fix_length(y[skip:skip + num_samples], num_samples).astype(np.float32, copy=False)
        if mode == "random":
            return random_crop(y, num_samples, rng).astype(np.float32, copy=False)
        if mode == "center":
            return center_crop(y, num_samples).astype(np.float32, copy=False)
        return fix_length(y, num_samples).astype(np.float32, copy=False)
