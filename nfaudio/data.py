"""Label encoding, sample weights, the training Dataset and the manifest validator.

Manifests (the table every layout becomes) live in :mod:`nfaudio.manifest`; their names are re-exported here.
Targets (:func:`encode_targets`) are multi-hot for sigmoid/BCE training; label smoothing uses the two-class form
of Szegedy et al. 2016 ("Rethinking the Inception Architecture") per class: ``t * (1 - ls) + ls / 2``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from nfaudio import audio
from nfaudio.audio import AudioError
from nfaudio.audio.cache import DecodedCache
from nfaudio.choices import CROPS
from nfaudio.config import Config, ConfigError
from nfaudio.manifest import (  # noqa: F401 - re-exported: data.py is the public entry point
    BASE_COLUMNS,
    BIRDCLEF_METADATA,
    Manifest,
    ManifestError,
    detect_kind,
    load_manifest,
    read_birdclef,
    read_csv_manifest,
    read_folder,
)

__all__ = ["AudioDataset", "class_balanced_weights", "encode_targets", "load_data", "make_sampler", "rating_weights",
           "split_train_val", "validate_manifest"]

logger = logging.getLogger(__name__)

_PROBE_S = 1.0  # seconds decoded at each end of a file by validate_manifest(full=False)


# ----------------------------------------------------------------------------------------------- targets
def encode_targets(manifest: Manifest, secondary_weight: float = 0.5, label_smoothing: float = 0.0) -> np.ndarray:
    """Multi-hot targets ``(N, C)`` float32: primary 1, secondary ``secondary_weight`` (max when repeated).

    Label smoothing treats each class as its own two-class (sigmoid) problem: ``t * (1 - ls) + ls / 2``, so
    negatives become ``ls / 2`` and positives ``1 - ls / 2`` whatever the number of classes (``ls / C``
    would assume a softmax and leave nearly nothing on negatives for hundreds of classes).

    Raises:
        ValueError: weight or smoothing outside [0, 1], or a label not in ``manifest.classes``.
    """
    if not 0.0 <= secondary_weight <= 1.0 or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"secondary_weight={secondary_weight} and label_smoothing={label_smoothing} must be in [0, 1]")
    index = {c: j for j, c in enumerate(manifest.classes)}
    df = manifest.df
    targets = np.zeros((len(df), len(index)), dtype=np.float32)
    for r, (prim, sec) in enumerate(zip(df["primary_label"], df["secondary_labels"])):
        try:
            for s in sec:
                targets[r, index[s]] = max(targets[r, index[s]], secondary_weight)
            targets[r, index[prim]] = 1.0
        except KeyError as err:
            raise ValueError(f"row {r} ({df['row_id'].iloc[r]}): label {err} not in classes") from err
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / 2.0
    return targets.astype(np.float32)


def rating_weights(df: pd.DataFrame | Manifest, min_weight: float = 0.1, zero_is_missing: bool = True) -> np.ndarray:
    """Per-sample weights ``clip(rating / 5, min_weight, 1)`` as float32; 1.0 where the rating is NaN/absent.

    ``zero_is_missing``: xeno-canto (BirdCLEF) uses rating 0 for "not rated", so it counts as absent (weight 1).
    """
    df = df.df if isinstance(df, Manifest) else df
    if "rating" not in df.columns:
        return np.ones(len(df), dtype=np.float32)
    rating = pd.to_numeric(df["rating"], errors="coerce").to_numpy(dtype=float)
    if zero_is_missing:
        rating = np.where(rating == 0, np.nan, rating)
    weights = np.clip(rating / 5.0, min_weight, 1.0)
    return np.where(np.isnan(rating), 1.0, weights).astype(np.float32)


def class_balanced_weights(manifest: Manifest, alpha: float = 0.5) -> np.ndarray:
    """Per-sample sampling weights ``count(primary_label) ** -alpha`` (float64, not normalised).

    ``alpha=0`` is uniform over samples, ``alpha=1`` is uniform over classes.
    """
    counts = manifest.df["primary_label"].map(manifest.df["primary_label"].value_counts())
    return counts.to_numpy(dtype=np.float64) ** -float(alpha)


def make_sampler(weights: np.ndarray | Sequence[float], num_samples: int | None = None,
                 generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """A with-replacement :class:`WeightedRandomSampler`; ``num_samples`` defaults to ``len(weights)``.

    Raises:
        ValueError: weights empty, negative, non-finite or all zero.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be a non-empty 1-D array of finite, non-negative values with a positive sum")
    return WeightedRandomSampler(torch.from_numpy(w), num_samples or len(w), replacement=True, generator=generator)


# ----------------------------------------------------------------------------------------------- dataset
class AudioDataset(Dataset):
    """Fixed-length clips with targets: items are ``(wave (T,), target (C,), weight (), row_id)``.

    ``train=True``: with ``crop="random"`` a random crop drawn from ``np.random.default_rng([seed, epoch, i])``
    (call :meth:`set_epoch` each epoch; persistent DataLoader workers hold their own copy, so the trainer sends the
    epoch with each index through :class:`nfaudio.training.loader.EpochIndexed`),
    then ``transform(y, sr, rng)``. ``train=False``: crop at the start (``"random"``/``"start"``) or the centre,
    no transform. Long files are read partially (``audio.info`` + ``audio.load(offset, duration)``); short ones
    are zero-padded. Holds only lists and arrays, so it pickles into DataLoader workers. With the default collate
    a batch is ``(waves (B, T), targets (B, C), weights (B,), row_ids: tuple[str, ...])``.

    Args:
        manifest: rows and classes. sample_rate, duration: output rate and clip length (seconds).
        train: random crops + transform. transform: ``f(y, sr, rng) -> y``, picklable for worker processes.
        secondary_weight, label_smoothing: see :func:`encode_targets`. use_rating: weights from
            :func:`rating_weights`, else 1. seed: base of the per-item generators. crop: see above.
        cache: a :class:`~nfaudio.audio.cache.DecodedCache` at ``sample_rate`` to read the crops from (each file
            decoded once), or None to decode every crop.

    Raises:
        ValueError: bad ``crop``, ``sample_rate``, ``duration`` or ``seed``.
    """

    def __init__(self, manifest: Manifest, sample_rate: int = 32000, duration: float = 5.0, train: bool = False,
                 transform: Callable[[np.ndarray, int, np.random.Generator], np.ndarray] | None = None,
                 secondary_weight: float = 0.5, label_smoothing: float = 0.0, use_rating: bool = False,
                 seed: int = 0, crop: str = "random", cache: DecodedCache | None = None) -> None:
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if sample_rate <= 0 or duration <= 0 or seed < 0:
            raise ValueError(f"need sample_rate > 0, duration > 0, seed >= 0; got {sample_rate}, {duration}, {seed}")
        self.sample_rate, self.duration = int(sample_rate), float(duration)
        self.num_samples = int(round(self.duration * self.sample_rate))
        self.train, self.transform, self.seed, self.crop, self.epoch = train, transform, int(seed), crop, 0
        if cache is not None and cache.sample_rate != self.sample_rate:
            raise ValueError(f"cache sample rate {cache.sample_rate} != dataset sample rate {self.sample_rate}")
        self.cache = cache
        self.classes = list(manifest.classes)
        self.paths = manifest.df["path"].astype(str).tolist()
        self.row_ids = manifest.df["row_id"].astype(str).tolist()
        self.targets = encode_targets(manifest, secondary_weight, label_smoothing)
        self.weights = rating_weights(manifest.df) if use_rating else np.ones(len(manifest), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the random crops and transforms."""
        self.epoch = int(epoch)

    def load_clip(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The cropped/padded clip of row ``i`` at ``sample_rate`` (float32, ``(num_samples,)``); see
        :func:`nfaudio.audio.read_crop`."""
        mode = self.crop if self.crop != "random" else ("random" if self.train else "start")
        if self.cache is not None:
            return self.cache.read_crop(self.paths[i], self.duration, mode, rng)
        return audio.read_crop(self.paths[i], self.sample_rate, self.duration, mode, rng)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        i = int(i)
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        y = self.load_clip(i, rng)
        if self.train and self.transform is not None:
            y = np.asarray(self.transform(y, self.sample_rate, rng), dtype=np.float32)
            if y.shape[-1] != self.num_samples:
                y = audio.fix_length(y, self.num_samples)
        wave = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        return wave, torch.tensor(self.targets[i]), torch.tensor(self.weights[i], dtype=torch.float32), self.row_ids[i]


# ----------------------------------------------------------------------------------------------- a recipe's data
def load_data(cfg: Config) -> Manifest:
    """Read the manifest the ``data`` section points at, validating every file when asked.

    Raises:
        ConfigError: neither ``data.root`` nor ``data.manifest`` is set.
        ManifestError: the data is missing or malformed (the message names the file).
    """
    d = cfg.data
    source = d.manifest or d.root
    if not source:
        raise ConfigError("no data: set data.root (BirdCLEF or folder-per-class) or data.manifest (CSV)")
    kind = d.kind if d.kind != "auto" else detect_kind(source)  # one detection rule: manifest.detect_kind
    kwargs: dict[str, Any] = {}
    if kind == "csv":
        kwargs = dict(root=d.root if d.manifest else None, path_column=d.path_column, label_column=d.label_column)
    elif kind == "birdclef" and d.metadata and not d.manifest:
        kwargs = {"metadata": d.metadata}
    manifest = load_manifest(kind, source, **kwargs)
    if not manifest.classes:
        raise ManifestError(d.manifest or d.root, "empty class list")
    if d.validate:
        manifest, bad = validate_manifest(manifest, sample_rate=cfg.audio.sample_rate,
                                          min_duration=d.min_duration, workers=max(1, d.num_workers), drop=True)
        if len(bad):
            logger.warning("dropped %d unreadable or too-short files (first: %s: %s)", len(bad),
                        bad.iloc[0]["path"], bad.iloc[0]["reason"])
    return manifest


def split_train_val(cfg: Config, manifest: Manifest, folds: np.ndarray | None = None) -> tuple[Manifest, Manifest]:
    """Training and validation parts: by ``data.split_column`` when set, else by fold ``train.val_fold``.

    ``folds`` is a fold per row (from :func:`nfaudio.folds.run_folds`); required without a split column.
    """
    d = cfg.data
    if d.split_column:
        if d.split_column not in manifest.df.columns:
            raise ManifestError(d.manifest or d.root, f"split column '{d.split_column}' not in the manifest "
                                f"(columns: {', '.join(map(str, manifest.df.columns))})")
        split = manifest.df[d.split_column].astype(str).to_numpy()
        return manifest.subset(split == d.train_split), manifest.subset(split == d.val_split)
    if folds is None:
        raise ValueError("fold assignment needed when data.split_column is not set")
    k = cfg.train.val_fold
    return manifest.subset(folds != k), manifest.subset(folds == k)


# ----------------------------------------------------------------------------------------------- validation
def _check_file(path: str, sample_rate: int | None, min_duration: float, full: bool) -> str | None:
    """None when the file is usable, else the reason."""
    if not os.path.isfile(path):
        return "missing"
    try:
        meta = audio.info(path)
        if meta.duration < min_duration:
            return f"too short: {meta.duration:.3f} s < {min_duration:g} s"
        if full:
            y, sr = audio.load(path, sr=sample_rate)
            if y.shape[-1] / sr < min_duration:
                return f"too short: decodes to {y.shape[-1] / sr:.3f} s < {min_duration:g} s"
            return None
        probe = min(_PROBE_S, meta.duration)
        audio.load(path, sr=sample_rate, duration=probe)
        if meta.duration > probe:  # the end too: catches files truncated after the header was written
            y, _ = audio.load(path, sr=sample_rate, offset=meta.duration - probe, duration=probe)
            if y.shape[-1] == 0:
                return "unreadable: no samples at the end (truncated?)"
    except (AudioError, OSError, RuntimeError, ValueError, EOFError) as err:
        return f"unreadable: {err}"
    return None


def validate_manifest(manifest: Manifest, sample_rate: int | None = None, min_duration: float = 0.0,
                      workers: int = 2, drop: bool = False, full: bool = False) -> tuple[Manifest, pd.DataFrame]:
    """Check every file in parallel threads: exists, decodes, lasts at least ``min_duration`` seconds.

    Decoding reads the header plus ~1 s at the start and the end of each file, or the whole file with
    ``full=True`` (resampled to ``sample_rate`` when given). A summary is logged; nothing is raised for bad
    files: the caller decides (e.g. ``if len(bad): raise ...``).

    Args:
        manifest: rows to check. sample_rate: decode at this rate (None: the file's own).
        min_duration: shortest acceptable file in seconds. workers: threads (<= 1: serial).
        drop: return the manifest without the bad rows. full: decode whole files, not just both ends.

    Returns:
        ``(manifest, bad)``: with ``drop=True`` the manifest without the bad rows, with ``drop=False`` the full
        manifest unchanged; ``bad`` has columns ``row_id``, ``path``, ``reason`` (empty when all files are fine).
    """
    paths = manifest.df["path"].astype(str).tolist()

    def check(p: str) -> str | None:
        return _check_file(p, sample_rate, min_duration, full)

    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(check, paths))
    else:
        reasons = [check(p) for p in paths]
    bad_mask = np.array([r is not None for r in reasons], dtype=bool)
    bad = pd.DataFrame({"row_id": manifest.df["row_id"].to_numpy()[bad_mask],
                        "path": np.asarray(paths, dtype=object)[bad_mask],
                        "reason": [r for r in reasons if r is not None]}, columns=["row_id", "path", "reason"])
    kinds = bad["reason"].str.split(":").str[0].value_counts().to_dict() if len(bad) else {}
    log = logger.warning if len(bad) else logger.info
    log("validated %d files: %d bad %s%s", len(paths), len(bad), kinds, " (dropped)" if drop and len(bad) else "")
    return (manifest.subset(~bad_mask) if drop else manifest), bad
