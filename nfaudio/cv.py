"""Kaggle-style K-fold cross-validation with one contract.

A CV run directory holds ``folds.csv`` (row id -> fold), ``fold{k}/`` (a training run per fold,
seeded with ``seed + k``), ``oof.csv`` (out-of-fold probabilities keyed by row id and fold, one
column per class: never matched to rows by position) and ``metrics.json`` (the metric per fold,
their mean and std, and the metric on the pooled out-of-fold predictions; accuracy too for
single-label tasks). An interrupted run resumes: finished folds are kept, the interrupted fold
continues from its ``last.pt``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from nfaudio.config import Config
from nfaudio.data import AudioDataset, Manifest, encode_targets, load_data
from nfaudio.fileio import write_csv
from nfaudio.folds import run_folds
from nfaudio.metrics import accuracy, get_metric
from nfaudio.rundir import RunDir
from nfaudio.runtime import intra_op_threads, resolve_device, torch_threads
from nfaudio.training import ClipFrameLoss, check_model, evaluate, fit

__all__ = ["cv_metrics", "predict_oof", "run_cv"]

log = logging.getLogger(__name__)


def predict_oof(cfg: Config, fold: RunDir, val_set: Manifest) -> pd.DataFrame:
    """Probabilities of the fold's best model on its validation rows, keyed by ``row_id``."""
    model, _ = fold.load_model()
    device = resolve_device(cfg.train.device)
    model.to(device)
    ds = AudioDataset(val_set, sample_rate=cfg.audio.sample_rate, duration=cfg.audio.duration, train=False,
                      crop=cfg.audio.eval_crop)
    loader = DataLoader(ds, batch_size=cfg.train.eval_batch_size or cfg.train.batch_size,
                        num_workers=cfg.data.num_workers)
    loss_fn = ClipFrameLoss(cfg.loss.name, cfg.loss.frame_weight)
    _, probs, ids = evaluate(model, loader, loss_fn, device, cfg.activation)
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
    with torch_threads(intra_op_threads(cfg.train.threads, workers=cfg.data.num_workers)):
        return _run_cv(cfg, RunDir(out_dir).create(), folds, full)


def _run_cv(cfg: Config, run: RunDir, folds: list[int] | None, full: bool) -> dict[str, Any]:
    manifest = load_data(cfg)
    fold_of_row = run_folds(cfg, manifest, run)
    run.write_info(cfg, seed=cfg.train.seed, classes=list(manifest.classes))
    available = sorted(int(k) for k in np.unique(fold_of_row))
    selected = folds if folds is not None else (cfg.cv.folds if cfg.cv.folds is not None else available)
    unknown = sorted(set(selected) - set(available))
    if unknown:
        raise ValueError(f"folds {unknown} do not exist; {run.file(RunDir.FOLDS)} has {available}")
    oof_parts = []
    for k in selected:
        fold = run.fold(k)
        train_set, val_set = manifest.subset(fold_of_row != k), manifest.subset(fold_of_row == k)
        if fold.is_done():
            log.info("fold %d already finished: kept", k)
        else:
            log.info("fold %d: %d train / %d validation rows", k, len(train_set), len(val_set))
            result = fit(cfg, train_set, val_set, fold.path, resume=True, seed=cfg.train.seed + k)
            part = predict_oof(cfg, fold, val_set)
            part.insert(1, "fold", k)
            write_csv(part, fold.file(RunDir.OOF))
            fold.write_done({"best_score": result.best_score, "best_epoch": result.best_epoch})
        oof_parts.append(pd.read_csv(fold.file(RunDir.OOF), dtype={"row_id": str}))
    oof = pd.concat(oof_parts, ignore_index=True)
    write_csv(oof, run.file(RunDir.OOF))
    metrics = cv_metrics(cfg, manifest, oof)
    metrics["folds"] = [int(k) for k in selected]
    if full:
        fit(cfg, manifest, None, run.full.path, resume=True, seed=cfg.train.seed)
        metrics["full_model"] = str(run.full.best)
    run.write_metrics(metrics)
    return metrics
