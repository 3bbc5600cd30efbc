"""Labels for the windows of an embedding store (what a probe, :mod:`nfaudio.embed.probe`, is trained on).

A labels CSV has a ``file`` column and a ``label`` column, and optionally ``start_s`` and ``end_s``:

- a row without ``start_s`` (no such column, or an empty cell) labels every window of its file;
- a row with ``start_s`` labels the one stored window of that file starting there (to 1 ms; ``end_s``, when
  given, must match too); such a row overrides its file's row for that window;
- ``label`` holds one class or several separated by ``;`` (multi-label); ``nocall`` means "none of the classes"
  (a negative window); an empty cell means "not labelled" and the row is skipped. Several rows of one window
  add up (their labels are united).

The filled-in suggestion table of ``nfaudio probe suggest`` (``rank, file, start_s, end_s, class, score, label``)
is such a file. ``file`` is matched to the store's file names as written, else after resolving both paths (a
relative name in the CSV is taken relative to the CSV's folder, then to the working directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nfaudio.metrics import NOCALL

__all__ = ["LabelError", "WindowLabels", "match_labels", "read_labels"]

_TOL = 1e-3  # seconds: how close a label's start/end must be to a stored window's


class LabelError(ValueError):
    """A labels table that does not fit the store (the message names the labels file and the row's file)."""


@dataclass
class WindowLabels:
    """The labelled windows of a store.

    Attributes:
        rows: ``(N,)`` int, the store rows (row order of :meth:`EmbeddingStore.keys`) that carry a label, ascending.
        labels: ``N`` label sets (``set()``: a ``nocall`` window), aligned with ``rows``.
        keys: ``file, start_s, end_s`` of those rows.
    """

    rows: np.ndarray
    labels: list[frozenset[str]]
    keys: pd.DataFrame

    @property
    def classes(self) -> list[str]:
        """The classes named by the labels, sorted."""
        return sorted(set().union(*self.labels)) if self.labels else []

    @property
    def single_label(self) -> bool:
        """Whether every labelled window has exactly one class (a multi-class task)."""
        return all(len(s) == 1 for s in self.labels)


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read a labels CSV (module docstring) into ``file, start_s, end_s, labels, line`` (``labels`` a frozenset,
    ``start_s``/``end_s`` NaN for a file's row, ``line`` the CSV line for messages); unlabelled rows dropped.

    Raises:
        FileNotFoundError: no such file.
        LabelError: unreadable, no ``file``/``label`` column, an empty file name or a bad time.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    try:
        df = pd.read_csv(path, dtype={"file": str, "label": str}, keep_default_na=False, na_values={"start_s": [""],
                                                                                               "end_s": [""]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise LabelError(f"{path}: cannot read CSV ({err})") from err
    missing = [c for c in ("file", "label") if c not in df.columns]
    if missing:
        raise LabelError(f"{path}: no {' or '.join(repr(c) for c in missing)} column (columns: {list(df.columns)})")
    out = pd.DataFrame({"file": df["file"].astype(str).str.strip(), "line": np.arange(len(df)) + 2})
    for col in ("start_s", "end_s"):
        try:
            out[col] = pd.to_numeric(df[col]) if col in df.columns else np.nan
        except (TypeError, ValueError) as err:
            raise LabelError(f"{path}: column {col!r} is not numeric ({err})") from err
    out["labels"] = [frozenset(p.strip() for p in str(v).split(";") if p.strip() and p.strip() != NOCALL)
                     for v in df["label"]]
    labelled = df["label"].astype(str).str.strip() != ""
    empty = out["file"] == ""
    if (empty & labelled).any():
        raise LabelError(f"{path}: line {int(out['line'][empty & labelled].iloc[0])}: empty file name")
    return out[labelled & ~empty].reset_index(drop=True)


def _resolver(store_files: list[str]) -> dict[str, str]:
    return {os.path.realpath(f): f for f in store_files}


def match_labels(keys: pd.DataFrame, table: pd.DataFrame, source: str | os.PathLike = "labels") -> WindowLabels:
    """The store rows a labels table (:func:`read_labels`) labels.

    Args:
        keys: the store's ``file, start_s, end_s`` in row order (:meth:`EmbeddingStore.keys`).
        table: the labels.
        source: the labels file (for messages, and the folder relative file names are resolved against).

    Raises:
        LabelError: a file that is not in the store, a window that is not in it, or no labelled window; the
            message names the labels file, its line and the file.
    """
    source = Path(source)
    files = keys["file"].astype(str).to_numpy()
    starts = keys["start_s"].to_numpy(dtype=float)
    ends = keys["end_s"].to_numpy(dtype=float)
    by_file: dict[str, np.ndarray] = {f: np.flatnonzero(files == f) for f in dict.fromkeys(files)}
    resolved: dict[str, str] | None = None
    per_file: dict[int, frozenset[str]] = {}
    per_window: dict[int, frozenset[str]] = {}
    for row in table.itertuples(index=False):
        name = row.file
        if name not in by_file:
            resolved = resolved if resolved is not None else _resolver(list(by_file))
            candidates = [name] if os.path.isabs(name) else [str(source.parent / name), name]
            name = next((resolved[r] for r in map(os.path.realpath, candidates) if r in resolved), None)
            if name is None:
                raise LabelError(f"{source}: line {row.line}: file {row.file} is not in the embedding store")
        idx = by_file[name]
        if np.isnan(row.start_s):
            for i in idx:
                per_file[int(i)] = per_file.get(int(i), frozenset()) | row.labels
            continue
        hit = idx[np.abs(starts[idx] - row.start_s) < _TOL]
        if not np.isnan(row.end_s):
            hit = hit[np.abs(ends[hit] - row.end_s) < _TOL]
        if not len(hit):
            span = f"{row.start_s:g}-{row.end_s:g} s" if not np.isnan(row.end_s) else f"starting at {row.start_s:g} s"
            raise LabelError(f"{source}: line {row.line}: file {row.file} has no stored window {span}")
        i = int(hit[0])
        per_window[i] = per_window.get(i, frozenset()) | row.labels
    merged = {**per_file, **per_window}  # a window's own row overrides its file's
    if not merged:
        raise LabelError(f"{source}: no labelled window")
    rows = np.array(sorted(merged), dtype=np.int64)
    return WindowLabels(rows=rows, labels=[merged[int(i)] for i in rows],
                        keys=keys.iloc[rows].reset_index(drop=True))
