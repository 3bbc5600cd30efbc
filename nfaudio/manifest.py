"""Manifests: every on-disk layout becomes one :class:`Manifest`, a pandas table plus the ordered class list.

Readers: :func:`read_birdclef` (Kaggle BirdCLEF 2021-2025), :func:`read_folder` (``root/<label>/*.ext``)
and :func:`read_csv_manifest` (``path,label[,fold][,group]``); :func:`load_manifest` picks one.

Table columns after any reader:

- ``row_id`` (str, stable): BirdCLEF -> ``filename`` without extension (``abethr1/XC128013``); folder ->
  path relative to the root without extension; CSV -> the ``row_id`` column, else the relative path without
  extension.
- ``path`` (absolute str), ``primary_label`` (str), ``labels`` (list[str], primary first, then secondary),
  ``secondary_labels`` (list[str], only labels in ``classes``, never the primary), ``rating`` (float, NaN when
  absent), ``group`` (str or NaN: ``author`` for BirdCLEF, the ``group`` column for CSV), ``fold`` (int, -1
  when absent), then every other column of the source file.

A manifest's problems are collected and raised together, one :class:`ManifestError` listing each on its own line:
rows with an empty path/label or a bad ``secondary_labels`` cell, an empty class list, primary labels outside the
class list (BirdCLEF: the labels of ``taxonomy.csv``/``sample_submission.csv``; a CSV or folder takes its classes
from its own labels, so none is unknown there), duplicate row ids and missing audio files. Secondary labels
outside the class list are dropped with a warning (BirdCLEF metadata names species outside a competition).
"""

from __future__ import annotations

import ast
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfaudio.audio import AUDIO_EXTENSIONS

logger = logging.getLogger(__name__)

__all__ = ["BASE_COLUMNS", "BIRDCLEF_AUDIO_DIRS", "BIRDCLEF_METADATA", "Manifest", "ManifestError", "detect_kind",
           "load_manifest", "read_birdclef", "read_csv_manifest", "read_folder"]

BASE_COLUMNS = ("row_id", "path", "primary_label", "labels", "secondary_labels", "rating", "group", "fold")
BIRDCLEF_METADATA = ("train_metadata.csv", "train.csv")
BIRDCLEF_AUDIO_DIRS = ("train_audio", "train_short_audio")  # 2021 used train_short_audio/
_MAX_LISTED = 20  # problems of one kind listed one per line; the rest are counted on one more line
_STR_COLUMNS = {c: str for c in ("primary_label", "secondary_labels", "filename", "path", "label", "row_id")}


class ManifestError(ValueError):
    """A manifest that cannot be used: ``problem`` is one problem or a list of them (``problems``); ``str()`` is
    one line per problem, each naming the file."""

    def __init__(self, path: str | os.PathLike, problem: str | Sequence[str]) -> None:
        self.path = str(path)
        self.problems = [problem] if isinstance(problem, str) else list(problem)
        self.problem = "\n".join(self.problems)
        super().__init__("\n".join(f"{self.path}: {p}" for p in self.problems))


@dataclass(eq=False)
class Manifest:
    """A table of labelled audio files (columns in the module docstring) and the ordered class list."""

    df: pd.DataFrame
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.df)

    def subset(self, mask_or_idx: Any) -> Manifest:
        """Rows selected by a boolean mask or integer positions; the class list is kept unchanged."""
        sel = np.asarray(mask_or_idx)
        if sel.dtype == bool and sel.shape != (len(self.df),):
            raise ValueError(f"boolean mask has shape {sel.shape}, expected ({len(self.df)},)")
        df = self.df.iloc[np.flatnonzero(sel) if sel.dtype == bool else sel.astype(int)]
        return Manifest(df.reset_index(drop=True), list(self.classes))


# ----------------------------------------------------------------------------------------------- helpers
def _read_table(path: Path, nrows: int | None = None) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=_STR_COLUMNS, nrows=nrows)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ManifestError(path, f"cannot read CSV: {err}") from err


def _require(df: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ManifestError(path, f"missing required column(s) {missing}; found {list(df.columns)}")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _parse_label_list(value: Any, path: Path, row: int) -> list[str]:
    """Parse a BirdCLEF ``secondary_labels`` cell (``"['a', 'b']"``, ``"[]"``, empty or NaN)."""
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if _blank(value):
        return []
    try:
        parsed = ast.literal_eval(str(value).strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise ManifestError(path, f"row {row} (line {row + 2}): secondary_labels {value!r} is not a "
                                  f"Python list literal ({type(err).__name__})") from err
    if not isinstance(parsed, list | tuple) or not all(isinstance(v, str | int) for v in parsed):
        raise ManifestError(path, f"row {row} (line {row + 2}): secondary_labels {value!r} is not a list of labels")
    return [str(v).strip() for v in parsed if str(v).strip()]


def _listed(lines: list[str], what: str) -> list[str]:
    """The first :data:`_MAX_LISTED` of ``lines`` and one line counting the rest."""
    return lines if len(lines) <= _MAX_LISTED else [*lines[:_MAX_LISTED], f"... and {len(lines) - _MAX_LISTED} "
                                                                        f"more {what}"]


def _finalize(df: pd.DataFrame, classes: list[str], source: Path, check_files: bool,
              problems: Sequence[str] = ()) -> Manifest:
    """Check classes/row ids/files, drop unknown secondary labels, order the columns.

    Every problem is collected (after ``problems`` found by the reader) and one :class:`ManifestError` lists them
    all, one per line: an empty class list, each primary label outside ``classes``, each duplicate row id, each
    missing audio file. Rows are named ``row i (line i + 2)`` by their index in the source table, or by their
    path when ``source`` is a folder.
    """
    problems = list(problems)
    where = (lambda i, path: path) if source.is_dir() else (lambda i, path: f"row {i} (line {int(i) + 2})")
    known = set(classes)
    if not classes:
        problems.append("empty class list (no labelled rows)")
    else:
        problems += _listed([f"{where(i, p)}: primary label {lab!r} is not in the class list"
                             for i, lab, p in zip(df.index, df["primary_label"], df["path"]) if lab not in known],
                            "rows with a primary label outside the class list")
    dropped: set[str] = set()
    secondary = []
    for prim, sec in zip(df["primary_label"], df["secondary_labels"]):
        dropped.update(s for s in sec if s not in known)
        secondary.append(list(dict.fromkeys(s for s in sec if s in known and s != prim)))
    if dropped and classes:
        logger.warning("%s: dropped %d secondary label(s) not in the class list, e.g. %s",
                       source, len(dropped), sorted(dropped)[:5])
    df = df.assign(secondary_labels=secondary,
                   labels=[[p, *s] for p, s in zip(df["primary_label"], secondary)])
    first = dict(zip(df["row_id"][::-1], zip(df.index[::-1], df["path"][::-1])))  # row id -> (index, path)
    problems += _listed([f"{where(i, p)}: duplicate row id {r!r} (first at {where(*first[r])})"
                         for i, r, p in zip(df.index, df["row_id"], df["path"]) if first[r][0] != i],
                        "duplicate row ids")
    if check_files:
        problems += _listed([f"{where(i, p)}: audio file not found: {p}" for i, p in zip(df.index, df["path"])
                             if not os.path.isfile(p)], "missing audio files")
    if problems:
        raise ManifestError(source, problems)
    df["rating"] = pd.to_numeric(df["rating"], errors="coerce").astype(float)
    df["fold"] = df["fold"].astype(int)
    extras = [c for c in df.columns if c not in BASE_COLUMNS]
    return Manifest(df[list(BASE_COLUMNS) + extras].reset_index(drop=True), list(classes))


def _fold_column(raw: pd.DataFrame, path: Path) -> pd.Series:
    """The integer ``fold`` column (-1 where absent/NaN)."""
    if "fold" not in raw.columns:
        return pd.Series(-1, index=raw.index, dtype=int)
    try:
        fold = pd.to_numeric(raw["fold"])
        if (fold.dropna() % 1 != 0).any():
            raise ValueError("non-integer value")
    except (ValueError, TypeError) as err:
        raise ManifestError(path, f"column `fold` must hold integers ({err})") from err
    return fold.fillna(-1).astype(int)


def _strip_ext(rel: str) -> str:
    return os.path.splitext(rel)[0]


# ----------------------------------------------------------------------------------------------- readers
def _class_file_classes(path: Path) -> list[str] | None:
    """Class order from ``taxonomy.csv`` (``primary_label``) or ``sample_submission.csv`` (after ``row_id``)."""
    table = _read_table(path)
    if "primary_label" in table.columns:
        return list(dict.fromkeys(v.strip() for v in table["primary_label"].dropna()))
    header = [str(c) for c in table.columns]
    if "row_id" in header:
        return header[header.index("row_id") + 1:]
    return None


def _birdclef_classes(root: Path, classes_from: str | None, seen: set[str]) -> list[str]:
    if classes_from is not None:
        path = Path(classes_from) if Path(classes_from).is_absolute() else root / classes_from
        if not path.is_file():
            raise ManifestError(path, "class file not found")
        classes = _class_file_classes(path)
        if not classes:
            raise ManifestError(path, "no classes: expected a `primary_label` column or class columns after `row_id`")
        return classes
    for name in ("taxonomy.csv", "sample_submission.csv"):
        path = root / name
        if path.is_file():
            classes = _class_file_classes(path)
            # 2021/2022 sample submissions hold `birds`/`target`, not class columns: skip those.
            if classes and seen & set(classes):
                logger.info("class order from %s (%d classes)", path, len(classes))
                return classes
            logger.info("ignoring %s: it does not list the training labels", path)
    return sorted(seen)


def read_birdclef(root: str | os.PathLike, metadata: str | None = None, classes_from: str | None = None,
                  check_files: bool = True) -> Manifest:
    """Read a Kaggle BirdCLEF (2021-2025) training folder.

    Args:
        root: competition folder holding the metadata CSV and ``train_audio/`` (2021: ``train_short_audio/``).
        metadata: metadata file name or path; default ``train_metadata.csv``, then ``train.csv``.
        classes_from: file fixing the class order (``taxonomy.csv`` or ``sample_submission.csv``); default:
            ``taxonomy.csv``, then ``sample_submission.csv`` when they list the labels, else sorted primary labels.
        check_files: raise when listed audio files are missing.

    Returns:
        The :class:`Manifest`; ``group`` is ``author``. Secondary labels not in the classes are dropped (warning).

    Raises:
        ManifestError: missing metadata/columns, unparsable ``secondary_labels``, empty classes, primary labels
            outside the classes, duplicate row ids, missing audio files.
    """
    root = Path(root).expanduser().resolve()
    if metadata is not None:
        meta_path = Path(metadata) if Path(metadata).is_absolute() else root / metadata
    else:
        meta_path = next((root / n for n in BIRDCLEF_METADATA if (root / n).is_file()), root / BIRDCLEF_METADATA[0])
    if not meta_path.is_file():
        raise ManifestError(meta_path, f"metadata not found (looked for {' or '.join(BIRDCLEF_METADATA)})")
    raw = _read_table(meta_path)
    _require(raw, ("primary_label", "filename"), meta_path)
    audio_dir = next((root / d for d in BIRDCLEF_AUDIO_DIRS if (root / d).is_dir()), root / BIRDCLEF_AUDIO_DIRS[0])
    if check_files and not audio_dir.is_dir():
        raise ManifestError(root, f"no audio folder ({' or '.join(BIRDCLEF_AUDIO_DIRS)})")
    sec_col = raw["secondary_labels"] if "secondary_labels" in raw.columns else [None] * len(raw)
    rows, problems, good = [], [], []
    for i, (prim, fname, sec) in enumerate(zip(raw["primary_label"], raw["filename"], sec_col)):
        if _blank(prim) or _blank(fname):
            problems.append(f"row {i} (line {i + 2}): empty primary_label or filename")
            continue
        prim, rel = prim.strip(), fname.strip().replace("\\", "/")
        if "/" not in rel:  # 2021: filename without the label folder
            rel = f"{prim}/{rel}"
        try:
            rows.append((_strip_ext(rel), str(audio_dir / rel), prim, _parse_label_list(sec, meta_path, i)))
        except ManifestError as err:
            problems.append(err.problem)
            continue
        good.append(i)
    raw = raw.iloc[good]  # the index keeps every row's position in the file
    df = raw.drop(columns=[c for c in BASE_COLUMNS if c in raw.columns])
    df.insert(0, "row_id", [r[0] for r in rows])
    df["path"], df["primary_label"] = [r[1] for r in rows], [r[2] for r in rows]
    df["secondary_labels"], df["labels"] = [r[3] for r in rows], None
    df["rating"] = raw["rating"] if "rating" in raw.columns else np.nan
    df["group"] = raw["author"] if "author" in raw.columns else np.nan
    df["fold"] = _fold_column(raw, meta_path)
    classes = _birdclef_classes(root, classes_from, set(df["primary_label"]))
    return _finalize(df, classes, meta_path, check_files, problems)


def read_folder(root: str | os.PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> Manifest:
    """Read a folder-per-class tree ``root/<label>/**/*.ext``.

    Args:
        root: folder whose sub-folders name the classes; files directly under it are ignored (warning).
        extensions: audio extensions, matched case-insensitively; hidden files and folders are skipped.

    Returns:
        The :class:`Manifest` with rows sorted by row id and classes sorted.

    Raises:
        ManifestError: missing folder, no audio files (empty class list), duplicate row ids.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ManifestError(root, "folder not found")
    exts = {(e if e.startswith(".") else f".{e}").lower() for e in extensions}
    rows = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if f.suffix.lower() not in exts or any(p.startswith(".") for p in rel.parts) or not f.is_file():
            continue
        if len(rel.parts) < 2:
            logger.warning("%s: ignoring %s (expected root/<label>/<file>)", root, rel)
            continue
        rows.append({"row_id": _strip_ext(rel.as_posix()), "path": str(f), "primary_label": rel.parts[0],
                     "secondary_labels": [], "labels": None, "rating": np.nan, "group": np.nan, "fold": -1})
    if not rows:
        raise ManifestError(root, f"empty class list: no audio files ({', '.join(sorted(exts))}) in label folders")
    df = pd.DataFrame(rows, columns=list(BASE_COLUMNS))
    return _finalize(df, sorted(set(df["primary_label"])), root, check_files=False)


def read_csv_manifest(path: str | os.PathLike, root: str | os.PathLike | None = None, check_files: bool = True,
                      path_column: str = "path", label_column: str = "label") -> Manifest:
    """Read a generic CSV manifest ``path,label[,fold][,group][,row_id][,rating]``.

    Args:
        path: the CSV. ``label`` may hold ``;``-separated labels (first one is primary).
        root: folder that relative ``path`` values start from; default the CSV's folder.
        check_files: raise when listed audio files are missing.
        path_column, label_column: names of the path and label columns in the CSV.

    Returns:
        The :class:`Manifest`; classes are the sorted union of all labels.

    Raises:
        ManifestError: missing file/columns, empty path or label, bad fold, empty classes, duplicate row ids,
            missing audio files.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ManifestError(path, "manifest not found")
    raw = _read_table(path)
    _require(raw, (path_column, label_column), path)
    base = Path(root).expanduser().resolve() if root else path.parent
    paths, row_ids, labels, problems, good = [], [], [], [], []
    for i, (p, lab) in enumerate(zip(raw[path_column].astype(object), raw[label_column].astype(object))):
        row_labels = [] if _blank(lab) else list(dict.fromkeys(s.strip() for s in str(lab).split(";") if s.strip()))
        if _blank(p) or not row_labels:
            problems.append(f"row {i} (line {i + 2}): empty path or label")
            continue
        good.append(i)
        full = Path(os.path.normpath(base / str(p).strip()))  # no resolve(): keep symlinked files' own names
        paths.append(str(full))
        rel = full.relative_to(base).as_posix() if full.is_relative_to(base) else full.as_posix()
        row_ids.append(_strip_ext(rel))
        labels.append(row_labels)
    raw = raw.iloc[good]  # the index keeps every row's position in the file
    used = {path_column, label_column} | {c for c in BASE_COLUMNS if c != "row_id"}
    df = raw.drop(columns=[c for c in raw.columns if c in used])
    if "row_id" in raw.columns:
        df["row_id"] = [r if _blank(given) else given.strip() for r, given in zip(row_ids, raw["row_id"])]
    else:
        df["row_id"] = row_ids
    df["path"], df["primary_label"] = paths, [ls[0] for ls in labels]
    df["secondary_labels"], df["labels"] = [ls[1:] for ls in labels], None
    df["rating"] = raw["rating"] if "rating" in raw.columns else np.nan
    df["group"] = raw["group"].map(lambda g: np.nan if _blank(g) else str(g)) if "group" in raw.columns else np.nan
    df["fold"] = _fold_column(raw, path)
    classes = sorted({lab for ls in labels for lab in ls})
    return _finalize(df, classes, path, check_files, problems)


def detect_kind(path: str | os.PathLike) -> str:
    """The manifest kind of ``path``: BirdCLEF metadata is a file named ``train_metadata.csv``/``train.csv`` with
    ``primary_label`` and ``filename`` columns (a generic manifest may also be called ``train.csv``). A folder
    holding BirdCLEF metadata -> "birdclef", another folder -> "folder"; a BirdCLEF metadata file -> "birdclef",
    any other file -> "csv".

    Raises:
        ManifestError: ``path`` does not exist.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return "birdclef" if any(_is_birdclef_metadata(path / n) for n in BIRDCLEF_METADATA) else "folder"
    if path.is_file():
        return "birdclef" if _is_birdclef_metadata(path) else "csv"
    raise ManifestError(path, "not found")


def _is_birdclef_metadata(path: Path) -> bool:
    """A file named like BirdCLEF metadata whose header has ``primary_label`` and ``filename``."""
    if path.name not in BIRDCLEF_METADATA or not path.is_file():
        return False
    return {"primary_label", "filename"} <= set(_read_table(path, nrows=0).columns)


def load_manifest(kind: str, path: str | os.PathLike, **kwargs: Any) -> Manifest:
    """Read a manifest of ``kind`` ``"auto" | "birdclef" | "folder" | "csv"``; extra kwargs go to the reader.

    ``auto`` is :func:`detect_kind`. A BirdCLEF metadata *file* is read as BirdCLEF on its folder.

    Raises:
        ValueError: unknown kind. ManifestError: see the readers.
    """
    path = Path(path).expanduser()
    if kind == "auto":
        kind = detect_kind(path)
    if kind == "birdclef" and path.is_file():
        return read_birdclef(path.parent, metadata=path.name, **kwargs)
    readers: dict[str, Callable[..., Manifest]] = {
        "birdclef": read_birdclef, "folder": read_folder, "csv": read_csv_manifest}
    if kind not in readers:
        raise ValueError(f"unknown manifest kind {kind!r}; expected one of {['auto', *readers]}")
    return readers[kind](path, **kwargs)
