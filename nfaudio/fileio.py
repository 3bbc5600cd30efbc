"""Atomic file writes: every output nfaudio writes goes to ``<name>.<unique>.nfaudio-tmp`` first and is renamed
into place only when complete, so a killed job never leaves a half-written checkpoint, table or config behind, and
processes writing the same file at once (parallel fold processes on one ``--out``, cluster workers) each rename
their own whole copy: the last rename wins and none fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["TMP_SUFFIX", "atomic_open", "atomic_path", "exclusive_lock", "torch_save", "writable_dir", "write_csv",
           "write_json", "write_text"]

TMP_SUFFIX = ".nfaudio-tmp"  # files being written; a leftover one is from a killed job


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The parent folder is created. On an exception the temporary file is removed and ``path`` is untouched. The
    temporary name is unique to this call (process id and a random part, ending in :data:`TMP_SUFFIX`), so
    concurrent writers of one ``path`` never rename or remove each other's file. It is only named, not created:
    the writer creates it with the process's usual permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """``open`` for writing through :func:`atomic_path`; text mode uses ``newline=""``; fsynced before the rename."""
    with atomic_path(path) as tmp, open(tmp, mode, **({"newline": ""} if "b" not in mode else {})) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_open(path) as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any, **kwargs: Any) -> None:
    """Write ``obj`` as JSON (``indent=2`` unless given) atomically."""
    kwargs.setdefault("indent", 2)
    write_text(path, json.dumps(obj, **kwargs) + "\n")


def write_csv(df: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """``df.to_csv(path, index=False, **kwargs)`` atomically."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def writable_dir(folder: str | os.PathLike) -> bool:
    """Create ``folder`` if needed and check that a file can be made in it."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError:
        return False
    return True


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive ``flock`` on the file ``path`` (created) for the block; no lock where ``fcntl`` does not exist
    (callers keep their results whole by atomic renames alone there)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
