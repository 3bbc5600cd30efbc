"""The jobs behind ``nfaudio probe train`` and ``nfaudio probe predict``: cross-validate and fit a probe
(:mod:`nfaudio.embed.probe`) on a store's labelled windows, and score a whole store with it, shard by shard.

``train_probe`` writes ``OUT/probe.json`` + ``OUT/probe.npz`` (fit on every labelled window), ``OUT/oof.csv``
(``file, start_s, end_s, fold`` and one out-of-fold probability column per class) and ``OUT/metrics.json``
(``metric``, ``per_fold``, ``mean``, ``std``, ``pooled_oof``, ``n_rows``, ``folds``: the shape of ``nfaudio cv``'s).
``predict_store`` writes ``OUT/scores.csv`` in ``nfaudio predict``'s table format (``file, start_s, end_s`` and a
probability column per class, one row per stored window, in store order).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfaudio.embed.labels import WindowLabels, match_labels, read_labels
from nfaudio.embed.probe import Probe, fit_estimator, fit_probe, probe_settings, resolve_task, targets
from nfaudio.embed.store import KEY_COLUMNS, EmbeddingStore, open_store
from nfaudio.fileio import atomic_open, write_json
from nfaudio.formats import write_rows

__all__ = ["ProbeResult", "assign_probe_folds", "predict_store", "probe_cv", "score_store", "train_probe"]

log = logging.getLogger(__name__)

SCORES = "scores.csv"


@dataclass
class ProbeResult:
    """What :func:`train_probe` made: the probe fit on all labelled windows, ``metrics.json``'s content (None
    without CV) and the out-of-fold table (None without CV)."""

    probe: Probe
    metrics: dict[str, Any] | None
    oof: pd.DataFrame | None


def assign_probe_folds(labels: WindowLabels, n_folds: int, seed: int = 0) -> np.ndarray:
    """A fold per labelled window, grouped by file and stratified on the window's first class
    (:func:`nfaudio.folds.assign_folds`, strategy ``group``).

    Raises:
        ValueError: fewer labelled files than folds.
    """
    from nfaudio.folds import assign_folds
    from nfaudio.manifest import Manifest

    first = [min(s) if s else "nocall" for s in labels.labels]
    df = pd.DataFrame({"primary_label": first, "group": labels.keys["file"].astype(str).to_numpy()})
    try:
        return assign_folds(Manifest(df, labels.classes), n_folds, "group", "group", seed)
    except ValueError as err:
        raise ValueError(f"cross-validating the probe by file: {err} (pass fewer folds, or --folds 0)") from None


def _summary(metric: str, truth: np.ndarray, oof: np.ndarray, folds: np.ndarray, single: bool) -> dict[str, Any]:
    """``nfaudio cv``'s metrics.json shape (see :func:`nfaudio.cv.cv_metrics`) over out-of-fold probabilities."""
    from nfaudio.metrics import accuracy, get_metric

    fn = get_metric(metric)

    def score(idx: np.ndarray) -> dict[str, float | None]:
        try:
            out: dict[str, float | None] = {metric: float(fn(truth[idx], oof[idx]))}
        except ValueError as err:  # e.g. macro_auc on a fold without a negative of any class
            log.warning("%s undefined on %d windows: %s", metric, len(idx), err)
            out = {metric: None}
        if single:
            out["accuracy"] = float(accuracy(truth[idx].argmax(1), oof[idx]))
        return out

    per_fold = {str(int(k)): score(np.flatnonzero(folds == k)) for k in np.unique(folds)}
    names = list(next(iter(per_fold.values())))

    def agg(fn_: Any, n: str) -> float | None:
        vals = [f[n] for f in per_fold.values() if f[n] is not None]
        return float(fn_(vals)) if vals else None

    return {"metric": metric, "per_fold": per_fold, "mean": {n: agg(np.mean, n) for n in names},
            "std": {n: agg(np.std, n) for n in names}, "pooled_oof": score(np.arange(len(folds))),
            "n_rows": int(len(folds)), "folds": [int(k) for k in np.unique(folds)]}


def probe_cv(x: np.ndarray, labels: WindowLabels, kind: str = "logreg", task: str = "auto", n_folds: int = 5, *,
             metric: str | None = None, C: float = 1.0, hidden: Sequence[int] = (256,), alpha: float = 1e-4,
             max_iter: int | None = None, seed: int = 0, what: str = "labels",
             ) -> tuple[dict[str, Any], pd.DataFrame]:
    """K-fold CV of a probe grouped by file: ``(metrics, oof)``.

    Args:
        x: ``(N, D)`` embeddings of the labelled windows (aligned with ``labels.rows``).
        labels: the labelled windows. kind, task, C, hidden, alpha, max_iter, seed: as :func:`fit_probe`.
        n_folds: folds (>= 2). metric: a name of :data:`nfaudio.metrics.METRICS` (default: ``accuracy`` for a
            multi-class probe, ``macro_auc`` for a multi-label one).

    Returns:
        ``metrics`` (the shape of ``nfaudio cv``'s ``metrics.json``) and ``oof``: ``file, start_s, end_s, fold``
        and a probability column per class, one row per labelled window.
    """
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {n_folds}")
    settings = probe_settings(kind, C, hidden, alpha, max_iter, seed)
    task = resolve_task(labels, task, what)
    classes = labels.classes
    metric = metric or ("accuracy" if task == "multiclass" else "macro_auc")
    folds = assign_probe_folds(labels, n_folds, seed)
    y = targets(labels, classes, task)
    truth = np.eye(len(classes), dtype=np.float64)[y] if task == "multiclass" else y.astype(np.float64)
    x = np.asarray(x, np.float64)
    oof = np.zeros((len(x), len(classes)), np.float64)
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        present = np.unique(y[tr]) if task == "multiclass" else None
        if task == "multiclass" and len(present) < 2:
            raise ValueError(f"{what}: fold {k}'s training windows hold a single class; use fewer folds")
        est = fit_estimator(kind, task, x[tr], y[tr], settings)
        proba = est.predict_proba(x[va])
        if task == "multiclass":
            oof[np.ix_(va, est[-1].classes_)] = proba  # a class missing from the training folds scores 0
        else:
            oof[va] = proba
    metrics = _summary(metric, truth, oof, folds, task == "multiclass")
    table = labels.keys.assign(fold=folds)
    table = pd.concat([table, pd.DataFrame(oof, columns=classes)], axis=1)
    return metrics, table


def _labelled(store: EmbeddingStore, labels_path: str | os.PathLike) -> tuple[np.ndarray, WindowLabels]:
    """The labelled windows and their embeddings, read shard by shard (only those rows are kept in memory)."""
    labels = match_labels(store.keys(), read_labels(labels_path), labels_path)
    parts, offset = [], 0
    for _, v in store.iter_batches():
        n = len(v["embedding"])
        mine = labels.rows[(labels.rows >= offset) & (labels.rows < offset + n)] - offset
        parts.append(v["embedding"][mine])
        offset += n
    return np.concatenate(parts), labels


def train_probe(store: EmbeddingStore | str | os.PathLike, labels: str | os.PathLike, out_dir: str | os.PathLike
                | None = None, kind: str = "logreg", task: str = "auto", n_folds: int = 5, *, metric: str | None = None,
                C: float = 1.0, hidden: Sequence[int] = (256,), alpha: float = 1e-4, max_iter: int | None = None,
                seed: int = 0) -> ProbeResult:
    """Cross-validate (``n_folds >= 2``; 0 or 1: no CV) and fit a probe on the windows a labels CSV labels.

    Args:
        store: the embedding store (or its folder). labels: the labels CSV (:mod:`nfaudio.embed.labels`).
        out_dir: where ``probe.json``, ``probe.npz``, ``oof.csv``, ``metrics.json`` go (None: nothing written).
        others: as :func:`probe_cv` and :func:`~nfaudio.embed.probe.fit_probe`.

    Raises:
        nfaudio.embed.labels.LabelError: a labelled file or window that is not in the store (named).
        ValueError: bad settings, too few classes or files for the folds.
    """
    store = store if isinstance(store, EmbeddingStore) else open_store(store)
    x, win = _labelled(store, labels)
    what = str(labels)
    opts = dict(C=C, hidden=hidden, alpha=alpha, max_iter=max_iter, seed=seed)
    metrics = oof = None
    if n_folds >= 2:
        metrics, oof = probe_cv(x, win, kind, task, n_folds, metric=metric, what=what, **opts)
    source = {"root": str(store.root), "dim": store.dim, "info": store.info}
    probe = fit_probe(x, win, kind, task, source=source, what=what, **opts)
    if out_dir is not None:
        out = Path(out_dir)
        if oof is not None:
            with atomic_open(out / "oof.csv") as fh:
                write_rows(oof, fh)
            write_json(out / "metrics.json", {**metrics, "kind": kind, "task": probe.task, "classes": probe.classes})
        probe.save(out)
    return ProbeResult(probe, metrics, oof)


def _check_source(probe: Probe, store: EmbeddingStore) -> None:
    if probe.dim != store.dim:
        raise ValueError(f"{store.root} holds {store.dim}-wide embeddings, but the probe {probe.path} was trained on "
                         f"{probe.dim}-wide ones (from {probe.source.get('root')})")
    theirs, mine = probe.source.get("info", {}), store.info
    for key in ("models", "fold_mode"):
        if key in theirs and key in mine and theirs[key] != mine[key]:
            log.warning("%s was embedded with other %s than the probe's training store %s; its scores mean little",
                        store.root, key, probe.source.get("root"))


def score_store(probe: Probe, store: EmbeddingStore) -> pd.DataFrame:
    """Every stored window's probabilities, indexed by ``(file, start_s, end_s)`` (:meth:`Predictor.predict`'s
    table), in store order.

    Raises:
        ValueError: the store's embeddings are not the probe's width (both named).
    """
    _check_source(probe, store)
    frames = [pd.DataFrame(probe.predict_proba(v["embedding"], str(store.root)).astype(np.float32),
                           index=pd.MultiIndex.from_frame(k), columns=probe.classes) for k, v in store.iter_batches()]
    if not frames:
        return pd.DataFrame(columns=[*KEY_COLUMNS, *probe.classes]).set_index(list(KEY_COLUMNS))
    return pd.concat(frames)


def predict_store(probe: Probe, store: EmbeddingStore, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/scores.csv`` (``nfaudio predict``'s wide table) shard by shard, atomically; returns it."""
    _check_source(probe, store)
    path = Path(out_dir) / SCORES
    with atomic_open(path) as fh:
        first = True
        for keys, v in store.iter_batches():
            scores = pd.DataFrame(probe.predict_proba(v["embedding"], str(store.root)).astype(np.float32),
                                  columns=probe.classes)
            write_rows(pd.concat([keys, scores], axis=1), fh, header=first)
            first = False
        if first:
            write_rows(pd.DataFrame(columns=[*KEY_COLUMNS, *probe.classes]), fh)
    return path

