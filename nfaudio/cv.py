"""Kaggle-style K-fold cross-validation with one contract.

A CV run directory holds ``folds.csv`` (row id -> fold), ``fold{k}/`` (a training run per fold,
seeded with ``seed + k``), ``oof.csv`` (out-of-fold probabilities keyed by row id and fold, one
column per class: never matched to rows by position) and ``metrics.json`` (the metric per fold,
their mean and std, and the metric on the pooled out-of-fold predictions; accuracy too for
single-label tasks). An interrupted run resumes: finished folds are kept, the interrupted fold
continues from its ``last.pt``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfaudio.config import Config
from nfaudio.data import AudioDataset, Manifest, encode_targets, load_data
from nfaudio.fileio import write_csv
from nfaudio.metrics import accuracy, get_metric
from nfaudio.rundir import RunDir
from nfaudio.runtime import intra_op_threads, resolve_device, torch_threads
from nfaudio.training import ClipFrameLoss, check_model, fit
from nfaudio.training.distributed import World, barrier, broadcast, device_for, distributed, world
from nfaudio.training.trainer import evaluate_rows, shared_folds

__all__ = ["cv_metrics", "merge_cv", "predict_oof", "run_cv"]

log = logging.getLogger(__name__)


def predict_oof(cfg: Config, fold: RunDir, val_set: Manifest) -> pd.DataFrame:
    """Probabilities of the fold's best model on its validation rows, keyed by ``row_id`` (under torchrun the
    rows are scored by every rank and gathered; every rank returns the whole table)."""
    model, _ = fold.load_model()
    w = world()
    device = device_for(w, resolve_device(cfg.train.device))
    model.to(device)
    ds = AudioDataset(val_set, sample_rate=cfg.audio.sample_rate, duration=cfg.audio.duration, train=False,
                      crop=cfg.audio.eval_crop)
    loss_fn = ClipFrameLoss(cfg.loss.name, cfg.loss.frame_weight)
    _, probs, ids = evaluate_rows(model, ds, loss_fn, device, cfg.activation,
                                  cfg.train.eval_batch_size or cfg.train.batch_size,
                                  {"num_workers": cfg.data.num_workers}, w)
    out = pd.DataFrame(probs, columns=list(val_set.classes))
    out.insert(0, "row_id", ids)
    return out


def cv_metrics(cfg: Config, manifest: Manifest, oof: pd.DataFrame) -> dict[str, Any]:
    """Per-fold metric, mean/std, and the pooled OOF metric (plus accuracy for single-label tasks)."""
    metric = get_metric(cfg.train.metric)
    classes = list(manifest.classes)
    truth = pd.DataFrame((encode_targets(manifest, secondary_weight=1.0) > 0).astype(np.float32),
                         columns=classes)
    truth.insert(0, "row_id", manifest.df["row_id"].to_numpy())
    merged = oof.merge(truth, on="row_id", suffixes=("", "_true"), validate="one_to_one")
    single = cfg.activation == "softmax"

    def score(frame: pd.DataFrame) -> dict[str, float]:
        y_true = frame[[f"{c}_true" for c in classes]].to_numpy()
        y_score = frame[classes].to_numpy()
        out = {cfg.train.metric: float(metric(y_true, y_score))}
        if single:
            out["accuracy"] = float(accuracy(y_true.argmax(1), y_score))
        return out

    per_fold = {str(int(k)): score(g) for k, g in merged.groupby("fold")}  # JSON keys are strings
    names = list(next(iter(per_fold.values())))
    summary = {
        "metric": cfg.train.metric,
        "per_fold": per_fold,
        "mean": {n: float(np.mean([f[n] for f in per_fold.values()])) for n in names},
        "std": {n: float(np.std([f[n] for f in per_fold.values()])) for n in names},
        "pooled_oof": score(merged),
        "n_rows": int(len(merged)),
    }
    return summary


def run_cv(cfg: Config, out_dir: str | Path, folds: list[int] | None = None, full: bool = False) -> dict[str, Any]:
    """Train the selected folds (all by default), write ``oof.csv`` and ``metrics.json``.

    Args:
        cfg: the resolved recipe (``cv`` section: folds, strategy, group column).
        out_dir: the CV run directory; re-running the same command resumes it.
        folds: fold indices to train (default ``cfg.cv.folds`` or every fold).
        full: also train a final model on all rows into ``out_dir/full``.

    Returns:
        The ``metrics.json`` content.
    """
    check_model(cfg)
    with (torch_threads(intra_op_threads(cfg.train.threads, workers=cfg.data.num_workers)),
          distributed(cfg.train.device) as w):
        return _run_cv(cfg, RunDir(out_dir), folds, full, w)


def _run_cv(cfg: Config, run: RunDir, folds: list[int] | None, full: bool, w: World) -> dict[str, Any]:
    manifest = load_data(cfg)
    fold_of_row = shared_folds(cfg, manifest, run, w)
    if w.is_main:
        run.write_info(cfg, seed=cfg.train.seed, classes=list(manifest.classes), world_size=w.size)
    available = sorted(int(k) for k in np.unique(fold_of_row))
    selected = folds if folds is not None else (cfg.cv.folds if cfg.cv.folds is not None else available)
    unknown = sorted(set(selected) - set(available))
    if unknown:
        raise ValueError(f"folds {unknown} do not exist; {run.file(RunDir.FOLDS)} has {available}")
    skipped = []
    for k in selected:
        fold = run.fold(k)
        if fold.is_done():
            log.info("fold %d already finished: kept", k)
            continue
        holder = broadcast(fold.claim() if w.is_main else None, w)  # exactly one process trains a fold
        if holder is not None:
            log.warning("fold %d is being trained by another process (host %s, pid %s; %s): skipped here; delete "
                        "that file if the process is gone", k, holder.get("host"), holder.get("pid"),
                        fold.file(RunDir.CLAIM))
            skipped.append(k)
            continue
        try:
            train_set, val_set = manifest.subset(fold_of_row != k), manifest.subset(fold_of_row == k)
            log.info("fold %d: %d train / %d validation rows", k, len(train_set), len(val_set))
            result = fit(cfg, train_set, val_set, fold.path, resume=True, seed=cfg.train.seed + k)
            part = predict_oof(cfg, fold, val_set)
            part.insert(1, "fold", k)
            if w.is_main:
                write_csv(part, fold.file(RunDir.OOF))
                fold.write_done({"best_score": result.best_score, "best_epoch": result.best_epoch})
        finally:
            if w.is_main:
                fold.release()
        barrier(w)
    extra: dict[str, Any] = {}
    if full:
        fit(cfg, manifest, None, run.full.path, resume=True, seed=cfg.train.seed)
        extra["full_model"] = str(run.full.best)
    return _merge(cfg, run, manifest, w, extra)


def merge_cv(cfg: Config, out_dir: str | Path) -> dict[str, Any]:
    """Assemble ``oof.csv`` and ``metrics.json`` of a CV run from its finished folds, without training (the last
    step after several ``nfaudio cv --folds k`` processes; each of them also does it when it ends).

    Raises:
        ValueError: no fold of the run has finished.
    """
    run = RunDir(out_dir)
    manifest = load_data(cfg)
    return _merge(cfg, run, manifest, World(), strict=True)


def _merge(cfg: Config, run: RunDir, manifest: Manifest, w: World, extra: dict[str, Any] | None = None,
           strict: bool = False) -> dict[str, Any]:
    """oof.csv and metrics.json over every finished fold, under a lock: of concurrent processes, the last to
    merge sees every fold the others finished. No finished fold: an error when ``strict``, else a summary
    without scores (nothing written)."""
    with _merge_lock(run, w):
        done = [k for k in run.folds_trained() if run.fold(k).is_done()]
        assigned = (sorted(int(f) for f in pd.read_csv(run.file(RunDir.FOLDS))["fold"].unique())
                    if run.file(RunDir.FOLDS).is_file() else [])
        if not done:
            if strict:
                raise ValueError(f"{run.path}: no finished fold to merge")
            return {"metric": cfg.train.metric, "folds": [], "unfinished_folds": assigned, **(extra or {})}
        oof = pd.concat([pd.read_csv(run.fold(k).file(RunDir.OOF), dtype={"row_id": str}) for k in done],
                        ignore_index=True)
        metrics = cv_metrics(cfg, manifest, oof)
        metrics["folds"] = done
        metrics["unfinished_folds"] = sorted(set(assigned) - set(done))
        metrics.update(extra or {})
        if w.is_main:
            write_csv(oof, run.file(RunDir.OOF))
            run.write_metrics(metrics)
    return metrics


@contextlib.contextmanager
def _merge_lock(run: RunDir, w: World) -> Iterator[None]:
    if not w.is_main:
        yield
        return
    run.create()
    with open(run.path / ".merge.lock", "w") as fh:
        try:
            import fcntl

            fcntl.lockf(fh, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock
            pass
        yield
