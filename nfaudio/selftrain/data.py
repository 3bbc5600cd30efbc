"""Pseudo-labelled windows as training data, the two ways the BirdCLEF winners used them (recipe section ``pseudo``).

- ``mode: rows`` - every window of the pseudo-label tables is an extra training row with its soft target and
  loss weight ``pseudo.weight`` (:class:`PseudoDataset` beside the labelled :class:`~nfaudio.data.AudioDataset`,
  :class:`WithPseudoRows`).
- ``mode: mix`` - the 2025 winner's recipe: each labelled sample is mixed, with probability ``pseudo.mix_p``, with
  one pseudo-labelled window (waveform ``(1 - w) x + w x_pseudo``, ``w`` drawn uniformly in ``pseudo.mix_weight``);
  targets are combined by ``pseudo.mix_rule``, ``max`` (``max(t, t_pseudo)``, a call in either is a call in the
  mix) or ``weighted`` (``(1 - w) t + w t_pseudo``); the sample keeps its own loss weight (:class:`MixWithPseudo`).

Windows are drawn uniformly (``pseudo.sample: uniform``) or, as the 2025 winner sampled soundscapes, a file by the
sum of its windows' maximum probability and then one of its windows uniformly (``weight``). Pseudo-labelled data
only ever enters the training set: validation folds are scored on labelled rows alone. Every draw comes from
``np.random.default_rng([seed, epoch, index, stream])``, so a resumed run sees the same data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from nfaudio import audio
from nfaudio.choices import MIXUP_RULES, PSEUDO_MODES, PSEUDO_SAMPLING
from nfaudio.selftrain.pseudo import read_pseudo_labels

__all__ = ["MixWithPseudo", "PseudoDataset", "WithPseudoRows", "load_pseudo_tables", "pseudo_training_set"]

log = logging.getLogger(__name__)

_MIX_STREAM = 7  # the per-item generator stream of the mixing draws (the labelled item uses its own)


def load_pseudo_tables(paths: Sequence[str], classes: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Concatenate pseudo-label tables (folders or their ``pseudo_labels.csv``) in the student's class order.

    Returns:
        ``(rows, targets)``: rows with ``file, start_s, end_s, file_weight`` and float32 targets ``(N, C)``.

    Raises:
        ValueError: a table whose classes are not the student's (named, with what differs), or no rows at all.
        FileNotFoundError: a table is missing.
    """
    rows, targets = [], []
    for path in paths:
        table = read_pseudo_labels(path)
        if set(table.classes) != set(classes):
            extra, missing = sorted(set(table.classes) - set(classes)), sorted(set(classes) - set(table.classes))
            raise ValueError(f"pseudo-labels {path}: classes differ from the training data's (not in the data: "
                             f"{extra[:5]}, not in the table: {missing[:5]})")
        weights = table.files.set_index("file")["weight"]
        part = table.table[["file", "start_s", "end_s"]].copy()
        part["file_weight"] = part["file"].map(weights).fillna(0.0).to_numpy(dtype=np.float64)
        rows.append(part)
        targets.append(table.table[list(classes)].to_numpy(dtype=np.float32))
    if not rows or not sum(len(r) for r in rows):
        raise ValueError(f"pseudo-labels {list(paths)}: no pseudo-labelled windows (all below the floor?)")
    return pd.concat(rows, ignore_index=True), np.concatenate(targets)


class PseudoDataset(Dataset):
    """Pseudo-labelled windows: items ``(wave (T,), soft target (C,), weight (), row_id)`` as AudioDataset's.

    Item ``i`` is ``duration`` seconds from the start of window ``i`` (a random offset inside the window when it
    is longer and ``train``), zero-padded at a file's end, then ``transform(y, sr, rng)`` in training.

    Args:
        rows, targets: from :func:`load_pseudo_tables`. sample_rate, duration: the student's.
        weight: loss weight of every item. train, transform, seed: as :class:`~nfaudio.data.AudioDataset`.
        sampling: "uniform" or "weight" (see the module docstring), for :meth:`draw`.

    Raises:
        ValueError: bad ``sampling``, negative ``weight``, or rows and targets of different lengths.
    """

    def __init__(self, rows: pd.DataFrame, targets: np.ndarray, sample_rate: int, duration: float,
                 weight: float = 1.0, train: bool = True,
                 transform: Callable[[np.ndarray, int, np.random.Generator], np.ndarray] | None = None,
                 seed: int = 0, sampling: str = "uniform") -> None:
        if sampling not in PSEUDO_SAMPLING:
            raise ValueError(f"sampling must be one of {PSEUDO_SAMPLING}, got {sampling!r}")
        if weight < 0 or len(rows) != len(targets):
            raise ValueError(f"need weight >= 0 and one target per row; got {weight}, {len(rows)} vs {len(targets)}")
        self.paths = rows["file"].astype(str).tolist()
        self.starts = rows["start_s"].to_numpy(np.float64)
        self.lengths = (rows["end_s"] - rows["start_s"]).to_numpy(np.float64)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.sample_rate, self.duration = int(sample_rate), float(duration)
        self.num_samples = int(round(self.duration * self.sample_rate))
        self.weight, self.train, self.transform, self.seed, self.epoch = float(weight), train, transform, seed, 0
        self.sampling = sampling
        self._by_file = self._file_index(rows) if sampling == "weight" else None

    @staticmethod
    def _file_index(rows: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
        groups = rows.groupby("file", sort=False).indices
        members = [np.asarray(ix) for ix in groups.values()]
        weights = np.array([rows["file_weight"].iloc[ix[0]] for ix in members], dtype=np.float64)
        if not (weights > 0).any():
            weights = np.ones(len(members))
        return weights / weights.sum(), members

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self, rng: np.random.Generator) -> int:
        """One window index, uniformly or a file by its weight and then one of its windows."""
        if self._by_file is None:
            return int(rng.integers(len(self)))
        p, members = self._by_file
        return int(rng.choice(members[int(rng.choice(len(members), p=p))]))

    def load(self, i: int, rng: np.random.Generator | None) -> np.ndarray:
        """The window's audio at the student's rate and length (float32 ``(num_samples,)``)."""
        spare = max(0.0, self.lengths[i] - self.duration)
        offset = self.starts[i] + (float(rng.uniform(0.0, spare)) if rng is not None and spare > 0 else 0.0)
        y, _ = audio.load(self.paths[i], self.sample_rate, offset=offset, duration=self.duration)
        return audio.fix_length(y, self.num_samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        i = int(i)
        rng = np.random.default_rng([self.seed, self.epoch, i, 1]) if self.train else None
        y = self.load(i, rng)
        if self.train and self.transform is not None:
            y = audio.fix_length(np.asarray(self.transform(y, self.sample_rate, rng), np.float32), self.num_samples)
        row_id = f"pseudo:{self.paths[i]}:{self.starts[i]:g}"
        return (torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)), torch.from_numpy(self.targets[i]),
                torch.tensor(self.weight, dtype=torch.float32), row_id)


class WithPseudoRows(Dataset):
    """The labelled dataset followed by the pseudo-labelled rows (indices ``len(labelled) ..``)."""

    def __init__(self, labelled: Dataset, pseudo: PseudoDataset) -> None:
        self.labelled, self.pseudo = labelled, pseudo
        self.classes = list(getattr(labelled, "classes", []))

    def __len__(self) -> int:
        return len(self.labelled) + len(self.pseudo)

    def set_epoch(self, epoch: int) -> None:
        self.labelled.set_epoch(epoch)
        self.pseudo.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        n = len(self.labelled)
        return self.labelled[i] if i < n else self.pseudo[i - n]


class MixWithPseudo(Dataset):
    """Each labelled item mixed with a pseudo-labelled window (see the module docstring).

    Raises:
        ValueError: ``mix_weight`` not within [0, 1] or reversed, ``p`` outside [0, 1], unknown ``rule``.
    """

    def __init__(self, labelled: Dataset, pseudo: PseudoDataset, mix_weight: tuple[float, float] = (0.5, 0.5),
                 p: float = 1.0, rule: str = "max", seed: int = 0) -> None:
        lo, hi = (float(v) for v in mix_weight)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"mix_weight must be a range within [0, 1], got {mix_weight}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mix probability must be in [0, 1], got {p}")
        if rule not in MIXUP_RULES:
            raise ValueError(f"rule must be one of {MIXUP_RULES}, got {rule!r}")
        self.labelled, self.pseudo, self.mix_weight, self.p, self.rule = labelled, pseudo, (lo, hi), p, rule
        self.seed, self.epoch = int(seed), 0
        self.classes = list(getattr(labelled, "classes", []))

    def __len__(self) -> int:
        return len(self.labelled)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.labelled.set_epoch(epoch)
        self.pseudo.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        wave, target, weight, row_id = self.labelled[i]
        rng = np.random.default_rng([self.seed, self.epoch, int(i), _MIX_STREAM])
        if rng.uniform() >= self.p:
            return wave, target, weight, row_id
        w = float(rng.uniform(*self.mix_weight))
        other, soft, _, _ = self.pseudo[self.pseudo.draw(rng)]
        wave = (1.0 - w) * wave + w * other
        target = torch.maximum(target, soft) if self.rule == "max" else (1.0 - w) * target + w * soft
        return wave, target, weight, row_id


def pseudo_training_set(labelled: Dataset, paths: Sequence[str], classes: Sequence[str], *, mode: str,
                        sample_rate: int, duration: float, weight: float = 1.0,
                        mix_weight: tuple[float, float] = (0.5, 0.5), mix_p: float = 1.0, mix_rule: str = "max",
                        sampling: str = "uniform", transform: Callable | None = None, seed: int = 0) -> Dataset:
    """The training dataset of a recipe's ``pseudo`` section (see the module docstring).

    Raises:
        ValueError: unknown ``mode``, or what :func:`load_pseudo_tables` and the datasets raise.
    """
    if mode not in PSEUDO_MODES:
        raise ValueError(f"pseudo mode must be one of {PSEUDO_MODES}, got {mode!r}")
    rows, targets = load_pseudo_tables(paths, classes)
    pseudo = PseudoDataset(rows, targets, sample_rate, duration, weight=weight, train=True, transform=transform,
                           seed=seed, sampling=sampling)
    log.info("pseudo-labels: %d windows of %d files from %d table(s), %s", len(pseudo), rows["file"].nunique(),
             len(paths), "as extra rows" if mode == "rows" else f"mixed into each labelled sample (p={mix_p})")
    if mode == "rows":
        return WithPseudoRows(labelled, pseudo)
    return MixWithPseudo(labelled, pseudo, mix_weight=mix_weight, p=mix_p, rule=mix_rule, seed=seed)
