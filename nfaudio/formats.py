"""Output formats of a prediction: pure converters from the prediction table.

The prediction table is a DataFrame indexed by ``(file, start_s, end_s)`` with one probability column per class
(:func:`scores_frame` builds it from one file's windows, which a :class:`FileResult` holds). Converters:
:func:`to_submission` (BirdCLEF, ``row_id = <stem>_<end second>``), :func:`to_table` (wide), :func:`to_detections`
(long: file, start_s, end_s, label, score above a threshold and/or top-k), :func:`to_raven` (Raven Pro selection
table), :func:`to_audacity` (label track) and :func:`to_kaleidoscope` (Wildlife Acoustics Kaleidoscope CSV, the
columns of BirdNET-Analyzer's ``--rtype kaleidoscope``); :func:`write_rows` writes any of them as CSV/TSV with exact
decimal times. The journalled run that writes them to disk is :mod:`nfaudio.predict_run`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from nfaudio.choices import FORMATS, TABLE_FORMATS

__all__ = ["FLOAT_FORMAT", "FORMATS", "KALEIDOSCOPE_COLUMNS", "RAVEN_COLUMNS", "TABLE_FORMATS", "FileResult",
           "empty_output", "format_seconds", "row_id", "scores_frame", "to_audacity", "to_detections",
           "to_kaleidoscope", "to_raven", "to_submission", "to_table", "write_rows"]

RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Species", "Confidence"]
# BirdNET-Analyzer's Kaleidoscope result columns (birdnet_analyzer/analyze: KALEIDOSCOPE_HEADER).
KALEIDOSCOPE_COLUMNS = ["INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "scientific_name", "common_name",
                        "confidence", "lat", "lon", "week", "overlap", "sensitivity"]
FLOAT_FORMAT = "%.6g"


def scores_frame(path: str | Path, starts: np.ndarray, ends: np.ndarray, scores: np.ndarray | None,
                 classes: Sequence[str]) -> pd.DataFrame:
    """One file's windows as the prediction table: indexed by ``(file, start_s, end_s)``, a column per class."""
    n = len(starts)
    index = pd.MultiIndex.from_arrays([[str(path)] * n, starts, ends], names=["file", "start_s", "end_s"])
    scores = scores if scores is not None else np.zeros((0, len(classes)), np.float32)
    return pd.DataFrame(scores, index=index, columns=list(classes))


@dataclass
class FileResult:
    """One file's predictions (or why it has none), as :meth:`nfaudio.predict.Predictor.iter_results` yields them.

    Attributes:
        path: the audio file as listed.
        index: position in the list given to :meth:`~nfaudio.predict.Predictor.iter_results`.
        starts, ends: window bounds in seconds, shape ``(N,)``.
        scores: probabilities ``(N, C)`` float32; ``None`` when ``error`` is set.
        duration: file duration in seconds (from its header).
        error: the reason the file was skipped, else ``None``.
        embeddings: window embeddings ``(N, D)`` float32 from :meth:`~nfaudio.predict.Predictor.iter_embeddings`,
            else ``None``.
    """

    path: Path
    index: int
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray | None
    duration: float
    error: str | None = None
    embeddings: np.ndarray | None = None

    def to_frame(self, classes: Sequence[str]) -> pd.DataFrame:
        """The windows as a DataFrame indexed by ``(file, start_s, end_s)``, one column per class."""
        return scores_frame(self.path, self.starts, self.ends, self.scores, classes)


def format_seconds(values: Iterable[float]) -> list[str]:
    """Times as short exact decimals: 5.0 -> "5", 7.25 -> "7.25" (microsecond resolution)."""
    return [f"{v:.6f}".rstrip("0").rstrip(".") for v in values]


def row_id(stem: str, end_s: float) -> str:
    """The BirdCLEF window key ``<soundscape stem>_<end second>`` (``soundscape_29201_5``; 7.25 -> ``_7.25``)."""
    return f"{stem}_{format_seconds([end_s])[0]}"


def to_submission(scores: pd.DataFrame) -> pd.DataFrame:
    """BirdCLEF submission: ``row_id = <file stem>_<end second>`` then the class columns in order.

    Args:
        scores: prediction table indexed by ``(file, start_s, end_s)``.
    Returns:
        DataFrame with ``row_id`` and one column per class (non-integral end times keep their decimals).
    """
    idx = scores.index
    stems = [Path(f).stem for f in idx.get_level_values("file")]
    ends = idx.get_level_values("end_s").to_numpy(dtype=float)
    out = scores.reset_index(drop=True)
    out.insert(0, "row_id", [row_id(s, e) for s, e in zip(stems, ends)])
    return out


def to_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Wide table: columns ``file, start_s, end_s`` then one probability column per class."""
    return scores.reset_index()


def to_detections(scores: pd.DataFrame, threshold: float = 0.5, top_k: int | None = None) -> pd.DataFrame:
    """Long format ``file, start_s, end_s, label, score``: per window, the classes scoring ``>= threshold``
    (and among them the ``top_k`` best when given), best first; windows in table order.

    Raises:
        ValueError: ``top_k < 1``.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    values = scores.to_numpy(dtype=np.float32)
    order = np.argsort(-values, axis=1, kind="stable")  # per window, best first; ties in class order
    if top_k is not None:
        order = order[:, :top_k]
    ranked = np.take_along_axis(values, order, axis=1)
    rows, ranks = np.nonzero(ranked >= threshold)
    idx = scores.index
    labels = np.asarray(scores.columns, dtype=object)[order[rows, ranks]]
    return pd.DataFrame({"file": idx.get_level_values("file")[rows],
                         "start_s": idx.get_level_values("start_s")[rows].to_numpy(dtype=float),
                         "end_s": idx.get_level_values("end_s")[rows].to_numpy(dtype=float),
                         "label": labels, "score": ranked[rows, ranks]})


def to_raven(detections: pd.DataFrame, freq_range: tuple[float, float] = (0.0, 16000.0),
             offsets: dict[str, float] | None = None) -> pd.DataFrame:
    """Raven Pro selection table (one selection per detection, ``Selection`` numbered from 1).

    Args:
        detections: output of :func:`to_detections`.
        freq_range: ``Low Freq (Hz)`` and ``High Freq (Hz)`` of every selection.
        offsets: for a table spanning several files, each file's start time in the file sequence (the sum
            of the durations before it); adds ``Begin Path`` and ``File Offset (s)`` and shifts the times.
    """
    n = len(detections)
    start = detections["start_s"].to_numpy(dtype=float)
    shift = np.array([offsets[f] for f in detections["file"]], dtype=float) if offsets is not None else 0.0
    out = pd.DataFrame({"Selection": np.arange(1, n + 1), "View": ["Spectrogram 1"] * n, "Channel": np.ones(n, int),
                        "Begin Time (s)": start + shift,
                        "End Time (s)": detections["end_s"].to_numpy(dtype=float) + shift,
                        "Low Freq (Hz)": np.full(n, float(freq_range[0])),
                        "High Freq (Hz)": np.full(n, float(freq_range[1])),
                        "Species": detections["label"].to_numpy(), "Confidence": detections["score"].to_numpy()})
    if offsets is not None:
        out["Begin Path"] = [str(Path(f).resolve()) for f in detections["file"]]
        out["File Offset (s)"] = start
    return out


def to_audacity(detections: pd.DataFrame) -> pd.DataFrame:
    """Audacity label track rows ``start, end, label`` with ``label = "<class> (<score>)"``."""
    return pd.DataFrame({"start": detections["start_s"].to_numpy(dtype=float),
                         "end": detections["end_s"].to_numpy(dtype=float),
                         "label": [f"{c} ({s:.3f})" for c, s in zip(detections["label"], detections["score"])]})


def to_kaleidoscope(detections: pd.DataFrame, overlap: float = 0.0) -> pd.DataFrame:
    """Kaleidoscope CSV rows, one per detection, with the columns BirdNET-Analyzer writes
    (:data:`KALEIDOSCOPE_COLUMNS`).

    As in BirdNET-Analyzer, the absolute audio path is split into ``INDIR`` (the folder above the file's folder),
    ``FOLDER`` (the file's folder name) and ``IN FILE`` (the file name); ``OFFSET`` is the window start and
    ``DURATION`` its length in seconds. Our labels are class names, so ``scientific_name`` and ``common_name``
    both hold the class name. nfaudio has no location, date or sigmoid sensitivity: ``lat``, ``lon`` and
    ``week`` are -1 (BirdNET's "not given") and ``sensitivity`` is 1.0 (BirdNET's default, no adjustment).

    Args:
        detections: output of :func:`to_detections`.
        overlap: seconds shared by consecutive windows (``window - hop``, at least 0).
    """
    paths = [Path(f).resolve() for f in detections["file"]]
    start = detections["start_s"].to_numpy(dtype=float)
    n = len(detections)
    labels = detections["label"].to_numpy()
    return pd.DataFrame({"INDIR": [str(p.parent.parent) for p in paths], "FOLDER": [p.parent.name for p in paths],
                         "IN FILE": [p.name for p in paths], "OFFSET": start,
                         "DURATION": detections["end_s"].to_numpy(dtype=float) - start,
                         "scientific_name": labels, "common_name": labels,
                         "confidence": detections["score"].to_numpy(), "lat": np.full(n, -1), "lon": np.full(n, -1),
                         "week": np.full(n, -1), "overlap": np.full(n, max(float(overlap), 0.0)),
                         "sensitivity": np.full(n, 1.0)}, columns=KALEIDOSCOPE_COLUMNS)


def write_rows(df: pd.DataFrame, fh: IO[str], header: bool = True, sep: str = ",") -> None:
    """CSV/TSV rows with times as exact decimals and scores with :data:`FLOAT_FORMAT`."""
    df = df.copy()
    for col in ("start_s", "end_s", "Begin Time (s)", "End Time (s)", "File Offset (s)", "start", "end", "OFFSET",
                "DURATION", "overlap"):
        if col in df.columns:
            df[col] = format_seconds(df[col])
    df.to_csv(fh, sep=sep, index=False, header=header, float_format=FLOAT_FORMAT, lineterminator="\n")


def empty_output(name: str, classes: Sequence[str]) -> pd.DataFrame:
    """The columns of a combined output file that holds no rows (no file was scored)."""
    columns = {"submission.csv": ["row_id", *classes], "scores.csv": ["file", "start_s", "end_s", *classes],
               "detections.csv": ["file", "start_s", "end_s", "label", "score"],
               "raven_selections.txt": [*RAVEN_COLUMNS, "Begin Path", "File Offset (s)"],
               "kaleidoscope.csv": KALEIDOSCOPE_COLUMNS}[name]
    return pd.DataFrame(columns=columns)
