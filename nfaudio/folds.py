"""Fold assignment for validation and Kaggle-style cross-validation.

Strategies: ``stratified`` (on the primary label), ``group`` (stratified group K-fold: no group spans
train and validation), ``logo`` (leave-one-group-out: one fold per group) and ``predefined`` (the
manifest's own ``fold`` column, used as is). A manifest with a ``fold`` column >= 0 everywhere is
always used as is.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold, StratifiedKFold

from nfaudio.choices import FOLD_STRATEGIES as STRATEGIES
from nfaudio.config import Config
from nfaudio.manifest import Manifest
from nfaudio.rundir import RunDir

__all__ = ["STRATEGIES", "assign_folds", "run_folds"]

log = logging.getLogger(__name__)

_FOLD_KEYS = (("cv", "n_folds"), ("cv", "strategy"), ("cv", "group_column"), ("train", "seed"))


def run_folds(cfg: Config, manifest: Manifest, run: RunDir) -> np.ndarray:
    """The fold of each manifest row for a run: read from the run's ``folds.csv`` when it has one (matched by row
    id), else assigned from the ``cv`` section and written there. Training and CV both go through here, so a
    resumed run always keeps its folds.

    Raises:
        ValueError: the existing ``folds.csv`` lacks row ids of the manifest, or was assigned with other fold
            settings (the message names them).
    """
    stored = run.read_folds(manifest.df["row_id"].astype(str).tolist())
    if stored is not None:
        previous = run.read_config()
        changed = [f"{a}.{b}={getattr(getattr(previous, a), b)!r} (now {getattr(getattr(cfg, a), b)!r})"
                   for a, b in _FOLD_KEYS
                   if previous is not None and getattr(getattr(previous, a), b) != getattr(getattr(cfg, a), b)]
        if changed:
            raise ValueError(f"{run.file(RunDir.FOLDS)} was assigned with {', '.join(changed)}; "
                             "use a new output directory")
        return np.asarray(stored, dtype=int)
    c = cfg.cv
    folds = assign_folds(manifest, c.n_folds, c.strategy, c.group_column, cfg.train.seed)
    run.write_folds(manifest.df[["row_id", "primary_label"]].assign(fold=folds))
    return folds


def assign_folds(manifest: Manifest, n_folds: int = 5, strategy: str = "stratified",
                 group_column: str | None = None, seed: int = 42) -> np.ndarray:
    """A fold index per manifest row.

    Args:
        manifest: the table to split.
        n_folds: number of folds (ignored by ``logo`` and ``predefined``).
        strategy: one of :data:`STRATEGIES`.
        group_column: column holding the group (author, site, speaker) for ``group`` / ``logo``;
            defaults to the manifest's ``group`` column.
        seed: shuffling seed.

    Returns:
        ``int`` array of shape ``(N,)`` with values in ``[0, n_folds)``.

    Raises:
        ValueError: unknown strategy, missing group column, or too few rows/groups for ``n_folds``.
    """
    df = manifest.df
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown fold strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    if "fold" in df.columns and (df["fold"].to_numpy() >= 0).all() and len(df):
        if strategy != "predefined":
            log.info("manifest has a 'fold' column: using it as is")
        return df["fold"].to_numpy().astype(int)
    if strategy == "predefined":
        raise ValueError("strategy 'predefined' needs a 'fold' column >= 0 on every row of the manifest")
    labels = df["primary_label"].astype(str).to_numpy()
    index = np.arange(len(df))
    folds = np.full(len(df), -1, dtype=int)
    if strategy == "stratified":
        if len(df) < n_folds:
            raise ValueError(f"{len(df)} rows cannot be split into {n_folds} folds")
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = _quiet_split(splitter, index, labels)
    else:
        column = group_column or "group"
        if column not in df.columns or df[column].isna().any():
            raise ValueError(f"fold strategy '{strategy}' needs a group column '{column}' with no missing "
                             f"values (columns: {', '.join(df.columns)})")
        groups = df[column].astype(str).to_numpy()
        n_groups = len(np.unique(groups))
        if strategy == "logo":
            splits = LeaveOneGroupOut().split(index, labels, groups)
        else:
            if n_groups < n_folds:
                raise ValueError(f"{n_groups} groups in '{column}' cannot be split into {n_folds} folds")
            splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            splits = _quiet_split(splitter, index, labels, groups)
    for k, (_, val_idx) in enumerate(splits):
        folds[val_idx] = k
    return folds


def _quiet_split(splitter, index, labels, groups=None):
    """sklearn warns when a class has fewer members than folds; that is normal for rare species."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(index, labels, groups))
