"""Active learning: which windows to label next, from a probe's (or a model's) scores of a store.

Strategies: ``uncertain`` (uncertainty sampling: the windows whose most uncertain class score lies nearest
0.5, i.e. smallest ``min_c |p_c - 0.5|``) and ``top`` (the highest-scoring windows for one target class).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from nfaudio.fileio import write_csv

__all__ = ["STRATEGIES", "suggest", "write_suggestions"]

STRATEGIES = ("uncertain", "top")


def suggest(scores: pd.DataFrame, k: int, strategy: str = "uncertain", target: str | None = None) -> pd.DataFrame:
    """The ``k`` windows to label next, best first (ties in table order).

    Args:
        scores: one row per window indexed by ``(file, start_s, end_s)``, one probability column per class.
        k: how many windows (fewer when the table is shorter).
        strategy: ``uncertain`` or ``top``.
        target: the class for ``top``.

    Returns:
        columns ``rank, file, start_s, end_s, class, score, label`` (``label`` empty, to fill in); ``class``
        and ``score`` are the most uncertain class (``uncertain``) or the target class (``top``).

    Raises:
        ValueError: ``k < 1``, an unknown strategy, or ``top`` without a known target class.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    values = scores.to_numpy(dtype=np.float64)
    if strategy == "top":
        if target not in scores.columns:
            raise ValueError(f"strategy 'top' needs a target class among {list(scores.columns)}, got {target!r}")
        col = np.full(len(values), list(scores.columns).index(target))
        key = -values[:, col[0]]
    else:
        margin = np.abs(values - 0.5)
        col = np.argmin(margin, axis=1)
        key = margin[np.arange(len(values)), col]
    order = np.argsort(key, kind="stable")[:k]
    idx = scores.index
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1),
                         "file": idx.get_level_values("file")[order],
                         "start_s": idx.get_level_values("start_s")[order].to_numpy(dtype=float),
                         "end_s": idx.get_level_values("end_s")[order].to_numpy(dtype=float),
                         "class": np.asarray(scores.columns, dtype=object)[col[order]],
                         "score": values[order, col[order]], "label": ""})


def write_suggestions(suggestions: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """``out`` (CSV) and ``out`` with suffix ``.selections.txt`` (Raven, with an empty ``Label`` column)."""
    from nfaudio.formats import to_raven

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(suggestions, out)
    det = suggestions[["file", "start_s", "end_s"]].assign(
        label=suggestions["class"].to_numpy(), score=suggestions["score"].to_numpy())
    raven = to_raven(det).assign(Label="")
    path = out.with_suffix(".selections.txt")
    write_csv(raven, path, sep="\t")
    return [out, path]
