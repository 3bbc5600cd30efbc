"""Pseudo-label tables: a teacher's window scores on unlabelled recordings, turned into soft training targets.

The BirdCLEF 2023-2025 winners trained on labelled focal recordings, scored the competition's unlabelled
soundscapes with that model (or a fold ensemble), and trained again on both; the 2025 winner sharpened the
pseudo-labels by a power > 1 each noisy-student round and sampled soundscapes by the sum of their windows' maximum
probabilities. :func:`pseudo_label` does the scoring part through the :class:`~nfaudio.predict.Predictor`
(resumable, decode workers, any backend) and writes, in ``OUT/``::

    pseudo_labels.csv    file, start_s, end_s, one soft target per class (sharpened, top-k, windows above floor)
    pseudo_files.csv     file, windows, kept (windows above the floor), weight (sum of the windows' max probability)
    pseudo_labels.json   classes, settings, teacher, counts (format "nfaudio-pseudo-labels", version 1)
    scores/              the teacher's raw prediction run (scores.csv, errors.csv, its resume journal)

Targets, from the teacher's probabilities ``p`` of a window (:func:`sharpen`): windows whose largest probability is
below ``floor`` are dropped; ``p ** power`` (power > 1 pushes uncertain scores towards 0; with a softmax teacher the
row is renormalised to sum to 1, the classic temperature sharpening); with ``top_k`` every class but the window's
``top_k`` best is set to 0. The file weight uses the raw probabilities, so it does not depend on ``power``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nfaudio.fileio import atomic_open, write_csv, write_json

if TYPE_CHECKING:
    from nfaudio.predict import Predictor
    from nfaudio.predict_run import RunSummary

__all__ = ["PseudoLabels", "pseudo_label", "read_pseudo_labels", "sharpen"]

log = logging.getLogger(__name__)

FORMAT, VERSION = "nfaudio-pseudo-labels", 1
TABLE, FILES, META, SCORES = "pseudo_labels.csv", "pseudo_files.csv", "pseudo_labels.json", "scores"
KEYS = ["file", "start_s", "end_s"]
_CHUNK_ROWS = 100_000  # rows of the teacher's table read at a time: memory stays bounded for any archive


def sharpen(probs: np.ndarray, power: float = 1.0, top_k: int | None = None, normalize: bool = False,
            ) -> np.ndarray:
    """Soft targets from probabilities ``(N, C)``: ``p ** power``, rows renormalised when ``normalize`` (softmax
    teachers), then all but each row's ``top_k`` largest set to 0 (ties keep the first classes).

    Raises:
        ValueError: ``power <= 0`` or ``top_k < 1``.
    """
    if power <= 0:
        raise ValueError(f"sharpening power must be > 0, got {power}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    out = np.power(np.asarray(probs, dtype=np.float64), power)
    if normalize:
        out /= np.maximum(out.sum(axis=1, keepdims=True), 1e-30)
    if top_k is not None and top_k < out.shape[1]:
        order = np.argsort(-out, axis=1, kind="stable")
        mask = np.zeros(out.shape, dtype=bool)
        np.put_along_axis(mask, order[:, :top_k], True, axis=1)
        out = np.where(mask, out, 0.0)
    return out.astype(np.float32)


@dataclass(frozen=True)
class PseudoLabels:
    """A pseudo-label table read back (:func:`read_pseudo_labels`).

    Attributes:
        table: ``file, start_s, end_s`` and one float32 column per class, one row per kept window.
        files: ``file, windows, kept, weight`` per scored recording.
        classes: the class columns, in order.
        info: the settings and the teacher that made them (``pseudo_labels.json``).
    """

    table: pd.DataFrame
    files: pd.DataFrame
    classes: list[str]
    info: dict[str, Any]

    def targets(self) -> np.ndarray:
        """The soft targets as a float32 ``(windows, classes)`` array."""
        return self.table[self.classes].to_numpy(dtype=np.float32)


def read_pseudo_labels(path: str | os.PathLike) -> PseudoLabels:
    """Read a pseudo-label folder written by :func:`pseudo_label` (or its ``pseudo_labels.csv``).

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        ValueError: not a pseudo-label table, or its columns do not match its class list.
    """
    root = Path(path)
    if root.suffix == ".csv":
        root = root.parent
    meta_path = root / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root}: not a pseudo-label folder (no {META}; make one with nfaudio pseudo-label)")
    info = json.loads(meta_path.read_text())
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(f"{meta_path}: not an nfaudio pseudo-label table of version {VERSION}")
    classes = list(info["classes"])
    table = pd.read_csv(root / TABLE, dtype={c: np.float32 for c in classes}
                        | {"file": str, "start_s": np.float64, "end_s": np.float64})
    if list(table.columns) != KEYS + classes:
        raise ValueError(f"{root / TABLE}: columns {list(table.columns)[:6]}... do not match the classes of {META}")
    files = pd.read_csv(root / FILES, dtype={"file": str})
    return PseudoLabels(table=table, files=files, classes=classes, info=info)


def pseudo_label(predictor: Predictor, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                 power: float = 1.0, floor: float = 0.0, top_k: int | None = None, overwrite: bool = False,
                 progress: bool | None = None, cluster: str | None = None) -> RunSummary:
    """Score unlabelled recordings with a teacher and write a pseudo-label table (see the module docstring).

    The scoring is an ordinary resumable prediction run in ``out_dir/scores`` (re-running the same call after a
    crash continues it; files that fail go to its ``errors.csv``); the table is rebuilt from its scores at the end,
    so a rerun with other ``power``/``floor``/``top_k`` re-scores nothing.

    Args:
        predictor: the teacher (one model or a fold ensemble); its window and hop are the table's windows (use
            the student recipe's ``audio.duration`` as the window).
        inputs: files, folders and manifests of unlabelled audio.
        out_dir: output folder.
        power: sharpening power (> 0; 1 keeps the probabilities).
        floor: windows whose largest probability is below this are left out of the table (0 keeps all).
        top_k: keep only each window's ``top_k`` best classes (the rest are 0).
        overwrite: discard earlier scores in ``out_dir`` instead of resuming.
        progress: show a progress bar (default: when stderr is a terminal).
        cluster: score on a Dask cluster (as ``nfaudio predict --cluster``).

    Returns:
        The prediction run's summary.

    Raises:
        ValueError: an invalid option, or what :func:`~nfaudio.predict_run.run_prediction` raises.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"confidence floor must be in [0, 1], got {floor}")
    sharpen(np.zeros((1, 1)), power, top_k)  # validates power and top_k before any scoring
    out = Path(out_dir)
    summary = predictor.predict_to_dir(inputs, out / SCORES, formats=["table"], table_format="csv",
                                       overwrite=overwrite, progress=progress, cluster=cluster)
    classes = list(predictor.classes)
    normalize = getattr(predictor.scorer, "activation", "sigmoid") == "softmax"
    kept_rows, file_rows = 0, {}
    with atomic_open(out / TABLE) as fh:
        fh.write(",".join(KEYS + classes) + "\n")
        reader = pd.read_csv(out / SCORES / "scores.csv", chunksize=_CHUNK_ROWS,
                             dtype={"file": str, "start_s": np.float64, "end_s": np.float64})
        for chunk in reader:
            probs = chunk[classes].to_numpy(dtype=np.float64)
            best = probs.max(axis=1) if len(probs) else np.zeros(0)
            keep = best >= floor
            for file, top, kept in zip(chunk["file"], best, keep):
                row = file_rows.setdefault(file, [0, 0, 0.0])
                row[0], row[1], row[2] = row[0] + 1, row[1] + int(kept), row[2] + float(top)
            targets = pd.DataFrame(sharpen(probs[keep], power, top_k, normalize), columns=classes)
            part = pd.concat([chunk.loc[keep, KEYS].reset_index(drop=True), targets], axis=1)
            part.to_csv(fh, header=False, index=False, lineterminator="\n", float_format="%.6g")
            kept_rows += int(keep.sum())
    files = pd.DataFrame([(f, n, k, w) for f, (n, k, w) in file_rows.items()],
                         columns=["file", "windows", "kept", "weight"])
    write_csv(files, out / FILES, lineterminator="\n", float_format="%.6g")
    write_json(out / META, {
        "format": FORMAT, "version": VERSION, "classes": classes, "power": power, "floor": floor, "top_k": top_k,
        "normalized": normalize, "window": predictor.window, "hop": predictor.hop,
        "teacher": predictor.fingerprint(), "windows": int(files["windows"].sum()) if len(files) else 0,
        "rows": kept_rows, "files": len(files), "failed": summary.n_failed,
    })
    log.info("pseudo-labels: %d of %d windows of %d files kept (floor %.3g, power %.3g%s) in %s", kept_rows,
             int(files["windows"].sum()) if len(files) else 0, len(files), floor, power,
             f", top {top_k}" if top_k else "", out)
    return summary
