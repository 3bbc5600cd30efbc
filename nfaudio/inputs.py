"""Listing the recordings a prediction job scores: audio files, folders (recursive) and manifests.

Training data (BirdCLEF layouts, folder-per-class, labelled CSVs) is read by :mod:`nfaudio.manifest`; this module
only answers "which audio files are under these inputs", for :class:`~nfaudio.predict.Predictor` and
``nfaudio predict``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from nfaudio.audio import AUDIO_EXTENSIONS

__all__ = ["MANIFEST_EXTENSIONS", "list_audio", "read_manifest"]

MANIFEST_EXTENSIONS = (".csv", ".txt")


def read_manifest(path: str | Path) -> list[Path]:
    """Audio paths listed by a manifest: a CSV with a ``path`` (or ``filename``) column, or a text file with
    one path per line (``#`` comments). Relative paths are relative to the manifest's folder.

    Raises:
        ValueError: a CSV without a ``path``/``filename`` column.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        column = next((c for c in ("path", "filename") if c in df.columns), None)
        if column is None:
            raise ValueError(f"{path}: manifest needs a 'path' or 'filename' column, has {list(df.columns)}")
        items = [x for x in df[column] if x]
    else:
        lines = path.read_text().splitlines()
        items = [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]
    return [p if p.is_absolute() else path.parent / p for p in map(Path, items)]


def list_audio(inputs: Iterable[str | Path], extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Audio files of ``inputs``: files given directly, files found recursively in folders (by extension,
    sorted) and files listed in manifests (``.csv``/``.txt``, see :func:`read_manifest`); in input order,
    without duplicates. Files listed in a manifest are not checked here (a missing one fails at decode).

    Raises:
        FileNotFoundError: an input that does not exist.
    """
    out: dict[Path, None] = {}
    exts = {e.lower() for e in extensions}
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            out.update((f, None) for f in sorted(item.rglob("*")) if f.is_file() and f.suffix.lower() in exts)
        elif item.is_file() and item.suffix.lower() in MANIFEST_EXTENSIONS:
            out.update((f, None) for f in read_manifest(item))
        elif item.exists():
            out[item] = None
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return list(out)
