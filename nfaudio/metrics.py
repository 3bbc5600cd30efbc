"""Evaluation metrics, including the BirdCLEF competition metrics implemented exactly.

- BirdCLEF 2023: padded cmAP (:func:`padded_cmap`): sklearn ``average_precision_score(average="macro")``
  after appending ``padding_factor`` rows of all-ones to both solution and submission.
- BirdCLEF 2024/2025: macro ROC-AUC over the classes with at least one positive (:func:`macro_roc_auc`).
- BirdCLEF 2021: row-wise micro F1 with ``nocall`` (:func:`row_wise_micro_f1`).
- Plus top-1 :func:`accuracy`, :func:`macro_map` and :func:`per_class_report`.

``solution`` is an (N, C) 0/1 array (or DataFrame) of targets, ``submission`` an (N, C) array of scores.
When both are DataFrames, rows are matched by index and columns by name, never by position;
:func:`score_submission` does the same for competition CSVs keyed by a ``row_id`` column.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "METRICS",
    "NOCALL",
    "accuracy",
    "get_metric",
    "labels_from_scores",
    "macro_map",
    "macro_roc_auc",
    "padded_cmap",
    "per_class_report",
    "row_f1",
    "row_wise_micro_f1",
    "score_submission",
]

logger = logging.getLogger(__name__)

NOCALL = "nocall"
Table = np.ndarray | pd.DataFrame
Metric = Callable[[Table, Table], float]


def _preview(items: Iterable[object], n: int = 5) -> str:
    items = list(items)
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(repr(x) for x in items[:n]) + more


def _align(solution: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    """Return ``submission`` with rows in ``solution.index`` order and columns in ``solution`` order."""
    missing = [c for c in solution.columns if c not in submission.columns]
    extra = [c for c in submission.columns if c not in solution.columns]
    if missing or extra:
        raise ValueError(
            f"submission columns differ from the solution: missing {len(missing)} [{_preview(missing)}], "
            f"extra {len(extra)} [{_preview(extra)}]"
        )
    key = solution.index.name or "index"
    for name, df in (("solution", solution), ("submission", submission)):
        dup = df.index[df.index.duplicated()].unique()
        if len(dup):
            raise ValueError(f"{name} has {len(dup)} duplicated {key} values: [{_preview(dup)}]")
    sol_ids, sub_ids = set(solution.index), set(submission.index)
    if sol_ids != sub_ids:
        missing_ids = [i for i in solution.index if i not in sub_ids]
        extra_ids = [i for i in submission.index if i not in sol_ids]
        raise ValueError(
            f"submission {key} values differ from the solution: {len(missing_ids)} of {len(solution)} "
            f"missing [{_preview(missing_ids)}], {len(extra_ids)} extra [{_preview(extra_ids)}]"
        )
    return submission.loc[solution.index, list(solution.columns)]


def _as_float(x: Table, name: str) -> np.ndarray:
    if isinstance(x, pd.DataFrame):
        bad = [c for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
        if bad:
            raise ValueError(f"{name} has non-numeric columns: [{_preview(bad)}]")
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} is not numeric: {e}") from e


def _check_finite(a: np.ndarray, name: str, columns: Sequence[object] | None) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        col = columns[c] if columns is not None else c
        raise ValueError(f"{name} has {int(bad.sum())} NaN/inf values (first at row {r}, column {col!r})")


def _arrays(solution: Table, submission: Table, binary: bool = True) -> tuple[np.ndarray, np.ndarray, list]:
    """Validate and align a (solution, submission) pair; return float arrays and the column names."""
    columns: list | None = None
    if isinstance(solution, pd.DataFrame):
        columns = list(solution.columns)
        if isinstance(submission, pd.DataFrame):
            submission = _align(solution, submission)
    sol, sub = _as_float(solution, "solution"), _as_float(submission, "submission")
    if sol.ndim != 2 or sol.shape != sub.shape:
        raise ValueError(f"solution and submission must both be (N, C); got {sol.shape} and {sub.shape}")
    if sol.shape[0] == 0 or sol.shape[1] == 0:
        raise ValueError(f"empty solution of shape {sol.shape}")
    _check_finite(sol, "solution", columns)
    _check_finite(sub, "submission", columns)
    if binary and not np.isin(sol, (0.0, 1.0)).all():
        raise ValueError("solution must be 0/1; binarise soft targets first (e.g. solution > 0)")
    return sol, sub, columns if columns is not None else list(range(sol.shape[1]))


def padded_cmap(solution: Table, submission: Table, padding_factor: int = 5) -> float:
    """BirdCLEF 2023 padded class-mean average precision.

    Appends ``padding_factor`` rows of ones to both inputs, so every class has positives and a class
    with none scores high only if its scores are low everywhere, then takes the sklearn macro AP.

    Args:
        solution: (N, C) 0/1 targets.
        submission: (N, C) scores.
        padding_factor: number of all-ones rows appended (5 in the competition).

    Returns:
        The padded cmAP in [0, 1].

    Raises:
        ValueError: bad shapes, non-binary solution, NaN/inf scores, mismatched DataFrames.
    """
    if padding_factor < 0:
        raise ValueError(f"padding_factor must be >= 0, got {padding_factor}")
    sol, sub, _ = _arrays(solution, submission)
    pad = np.ones((int(padding_factor), sol.shape[1]))
    return float(average_precision_score(np.vstack([sol, pad]), np.vstack([sub, pad]), average="macro"))


def _scored_columns(sol: np.ndarray, need_negatives: bool) -> np.ndarray:
    n_pos = sol.sum(axis=0)
    keep = n_pos > 0
    if not keep.any():
        raise ValueError("no class has a positive in the solution; the metric is undefined")
    if need_negatives:
        keep &= n_pos < sol.shape[0]
        if not keep.any():
            raise ValueError("every class with a positive is positive in all rows; ROC-AUC is undefined")
    logger.debug("scoring %d of %d classes", int(keep.sum()), sol.shape[1])
    return np.flatnonzero(keep)


def macro_roc_auc(solution: Table, submission: Table) -> float:
    """BirdCLEF 2024/2025 macro ROC-AUC over the classes with at least one positive.

    Classes without positives are skipped (as in the competition metric). Classes that are positive in
    every row (no negatives) are skipped too: their AUC is undefined (the competition code would fail).

    Args:
        solution: (N, C) 0/1 targets.
        submission: (N, C) scores.

    Returns:
        Mean of the per-class ROC-AUCs of the scored classes.

    Raises:
        ValueError: no class has a positive (or none has both positives and negatives), or bad inputs.
    """
    sol, sub, _ = _arrays(solution, submission)
    cols = _scored_columns(sol, need_negatives=True)
    return float(roc_auc_score(sol[:, cols], sub[:, cols], average="macro"))


def macro_map(solution: Table, submission: Table) -> float:
    """Macro mean average precision over the classes with at least one positive.

    Args:
        solution: (N, C) 0/1 targets.
        submission: (N, C) scores.

    Returns:
        Mean of the per-class average precisions (sklearn) of the classes with positives.

    Raises:
        ValueError: no class has a positive, or bad inputs.
    """
    sol, sub, _ = _arrays(solution, submission)
    cols = _scored_columns(sol, need_negatives=False)
    return float(average_precision_score(sol[:, cols], sub[:, cols], average="macro"))


def accuracy(y_true: np.ndarray | Table, scores: Table) -> float:
    """Top-1 accuracy.

    Args:
        y_true: (N,) integer class indices, or (N, C) targets: a row counts as correct when the top-scored
            class holds the row's maximum positive target (one-hot: the true class; multi-hot: any positive;
            an all-zero row is never correct).
        scores: (N, C) scores; ties go to the lowest class index.

    Returns:
        Fraction of rows whose top-1 prediction is correct.

    Raises:
        ValueError: shape mismatch, out-of-range indices, NaN/inf scores.
    """
    if np.ndim(y_true) == 2:
        sol, sub, _ = _arrays(y_true, scores, binary=False)
        pred = sub.argmax(axis=1)
        row_max = sol.max(axis=1)
        return float(np.mean((sol[np.arange(len(sol)), pred] == row_max) & (row_max > 0)))
    idx = np.asarray(y_true)
    sub = _as_float(scores, "scores")
    if sub.ndim != 2 or idx.ndim != 1 or len(idx) != len(sub) or len(idx) == 0:
        raise ValueError(f"need (N,) targets and (N, C) scores; got {idx.shape} and {sub.shape}")
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= sub.shape[1]:
        raise ValueError(f"targets must be integer class indices in [0, {sub.shape[1]})")
    _check_finite(sub, "scores", None)
    return float(np.mean(sub.argmax(axis=1) == idx))


def per_class_report(
    solution: Table, submission: Table, classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per-class positives, average precision and ROC-AUC.

    Args:
        solution: (N, C) 0/1 targets.
        submission: (N, C) scores.
        classes: C class names; defaults to the DataFrame columns (or "0".."C-1").

    Returns:
        DataFrame with columns ``class``, ``n_pos``, ``ap`` (NaN without positives), ``auc`` (NaN without
        positives or without negatives), one row per class in input order.

    Raises:
        ValueError: ``classes`` has the wrong length, or bad inputs.
    """
    sol, sub, columns = _arrays(solution, submission)
    names = [str(c) for c in (columns if classes is None else classes)]
    if len(names) != sol.shape[1]:
        raise ValueError(f"got {len(names)} class names for {sol.shape[1]} columns")
    n_pos = sol.sum(axis=0).astype(int)
    ap = np.full(len(names), np.nan)
    auc = np.full(len(names), np.nan)
    for j in np.flatnonzero(n_pos > 0):
        ap[j] = average_precision_score(sol[:, j], sub[:, j])
        if n_pos[j] < len(sol):
            auc[j] = roc_auc_score(sol[:, j], sub[:, j])
    return pd.DataFrame({"class": names, "n_pos": n_pos, "ap": ap, "auc": auc})


def _label_set(labels: str | Iterable[str]) -> set[str]:
    out = set(labels.split()) if isinstance(labels, str) else {str(x) for x in labels}
    return out or {NOCALL}


def row_wise_micro_f1(
    true_labels: Sequence[str | Iterable[str]], pred_labels: Sequence[str | Iterable[str]]
) -> float:
    """BirdCLEF 2021 row-wise micro-averaged F1.

    Each row's labels are a set (or a space-separated string as in the submission CSV); an empty set or
    string means ``"nocall"``. Per row F1 = 2|T & P| / (|T| + |P|); the score is the mean over rows.

    Args:
        true_labels: the true label set per row.
        pred_labels: the predicted label set per row.

    Returns:
        The mean per-row F1 in [0, 1].

    Raises:
        ValueError: the sequences are empty or differ in length.
    """
    if len(true_labels) != len(pred_labels) or len(true_labels) == 0:
        raise ValueError(f"need equal, non-zero row counts; got {len(true_labels)} and {len(pred_labels)}")
    f1 = []
    for t, p in zip(true_labels, pred_labels):
        ts, ps = _label_set(t), _label_set(p)
        f1.append(2 * len(ts & ps) / (len(ts) + len(ps)))
    return float(np.mean(f1))


def labels_from_scores(scores: Table, classes: Sequence[str], threshold: float = 0.5) -> list[set[str]]:
    """Turn (N, C) scores into label sets: classes scoring ``>= threshold``, else ``{"nocall"}``.

    Raises:
        ValueError: ``classes`` length differs from C, or NaN/inf scores.
    """
    sc = _as_float(scores, "scores")
    if sc.ndim != 2 or sc.shape[1] != len(classes):
        raise ValueError(f"scores of shape {sc.shape} do not match {len(classes)} classes")
    _check_finite(sc, "scores", None)
    return [{classes[j] for j in np.flatnonzero(row >= threshold)} or {NOCALL} for row in sc]


def row_f1(solution: Table, submission: Table, threshold: float = 0.5) -> float:
    """:func:`row_wise_micro_f1` as a table metric: a 0/1 solution ``(N, C)`` and scores ``(N, C)``; a window's
    predicted labels are the classes scoring ``>= threshold`` (none: "nocall"), as in BirdCLEF 2021."""
    sol, sub, columns = _arrays(solution, submission)
    names = [str(c) for c in columns]
    return row_wise_micro_f1(labels_from_scores(sol, names, 0.5), labels_from_scores(sub, names, threshold))


METRICS: dict[str, Metric] = {
    "padded_cmap": padded_cmap,
    "macro_auc": macro_roc_auc,
    "map": macro_map,
    "accuracy": accuracy,
    "row_wise_micro_f1": row_f1,
}


def get_metric(name: str) -> Metric:
    """Look up a metric ``fn(solution, submission) -> float`` in :data:`METRICS`.

    Raises:
        ValueError: unknown name (the message lists close matches and all names).
    """
    if name in METRICS:
        return METRICS[name]
    close = difflib.get_close_matches(name, METRICS, n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(f"unknown metric {name!r}.{hint} Available: {sorted(METRICS)}")


def score_submission(
    solution_df: pd.DataFrame,
    submission_df: pd.DataFrame,
    metric: str | Metric,
    id_col: str = "row_id",
) -> float:
    """Score a competition-style submission against a solution, matching rows by ``id_col``.

    Args:
        solution_df: ``id_col`` plus one 0/1 column per class.
        submission_df: ``id_col`` plus the same class columns (any order) with scores; rows in any order.
        metric: a name in :data:`METRICS` or a callable ``fn(solution, submission) -> float``.
        id_col: the row-id column.

    Returns:
        The metric value.

    Raises:
        ValueError: ``id_col`` missing, duplicated/missing/extra row ids, missing/extra class columns,
            unknown metric, or any error of the metric itself.
    """
    fn = get_metric(metric) if isinstance(metric, str) else metric
    for name, df in (("solution", solution_df), ("submission", submission_df)):
        if id_col not in df.columns:
            raise ValueError(f"{name} has no {id_col!r} column (columns: [{_preview(df.columns)}])")
    sol = solution_df.set_index(id_col)
    sub = _align(sol, submission_df.set_index(id_col))
    return float(fn(sol, sub))
