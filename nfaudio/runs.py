"""Assemble a run from a config: data, model, augmentation, run-directory metadata.

The CLI and the Python API both go through these functions, so ``nfaudio train`` and
``nfaudio.runs.train_from_config`` do the same thing.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

import nfaudio
from nfaudio.augment import AddNoise, BackgroundNoise, Compose, Gain, TimeShift
from nfaudio.config import Config, ConfigError, dump_config
from nfaudio.data import (
    BIRDCLEF_METADATA,
    Manifest,
    ManifestError,
    load_manifest,
    read_birdclef,
    read_csv_manifest,
    validate_manifest,
)
from nfaudio.fileio import write_json
from nfaudio.models import AudioClassifier, create_model

log = logging.getLogger(__name__)


def frontend_kwargs(cfg: Config) -> dict[str, Any]:
    """LogMel arguments from the ``audio`` and ``frontend`` sections."""
    f = cfg.frontend
    return dict(sample_rate=cfg.audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                win_length=f.win_length, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, power=f.power,
                top_db=f.top_db, normalize=f.normalize, mean=f.mean, std=f.std)


def build_model(cfg: Config, num_classes: int) -> AudioClassifier:
    """The model of a recipe (frontend and SpecAugment inside it)."""
    m, aug = cfg.model, cfg.augment
    spec_augment = None
    if aug.specaug_p > 0:
        spec_augment = dict(freq_masks=aug.specaug_masks, freq_width=aug.specaug_freq_width,
                            time_masks=aug.specaug_masks, time_width=aug.specaug_time_width, p=aug.specaug_p)
    return create_model(m.name, num_classes=num_classes, pretrained=m.pretrained, head=m.head,
                        pooling=m.pooling, frontend=frontend_kwargs(cfg), spec_augment=spec_augment,
                        drop_path_rate=m.drop_path_rate, drop_rate=m.drop_rate, stem_stride=m.stem_stride,
                        channels_last=m.channels_last)


def build_augment(cfg: Config) -> Compose | None:
    """Waveform augmentations of the ``augment`` section (None when all are off)."""
    a = cfg.augment
    steps = []
    if a.gain_p > 0:
        steps.append(Gain(min_db=-a.gain_db, max_db=a.gain_db, p=a.gain_p))
    if a.shift_p > 0:
        steps.append(TimeShift(p=a.shift_p))
    if a.noise_p > 0:
        steps.append(AddNoise(min_snr_db=a.noise_snr[0], max_snr_db=a.noise_snr[1], color=a.noise_color,
                              p=a.noise_p))
    if a.background_p > 0 and a.background_files:
        steps.append(BackgroundNoise(a.background_files, min_snr_db=a.background_snr[0],
                                     max_snr_db=a.background_snr[1], p=a.background_p))
    return Compose(steps) if steps else None


def load_data(cfg: Config) -> Manifest:
    """Read the manifest the ``data`` section points at, validating every file when asked.

    Raises:
        ConfigError: neither ``data.root`` nor ``data.manifest`` is set.
        ManifestError: the data is missing or malformed (the message names the file).
    """
    d = cfg.data
    if d.manifest:
        path = Path(d.manifest)
        if d.kind == "csv" or (d.kind == "auto" and path.name not in BIRDCLEF_METADATA):
            manifest = read_csv_manifest(path, root=d.root, path_column=d.path_column,
                                         label_column=d.label_column)
        elif d.kind in ("auto", "birdclef"):  # a BirdCLEF metadata file: its folder is the competition root
            manifest = read_birdclef(path.parent, metadata=path.name)
        else:
            manifest = load_manifest(d.kind, path)
    elif d.root:
        kwargs = {"metadata": d.metadata} if d.metadata and d.kind == "birdclef" else {}
        manifest = load_manifest(d.kind, Path(d.root), **kwargs)
    else:
        raise ConfigError("no data: set data.root (BirdCLEF or folder-per-class) or data.manifest (CSV)")
    if not manifest.classes:
        raise ManifestError(d.manifest or d.root, "empty class list")
    if d.validate:
        manifest, bad = validate_manifest(manifest, sample_rate=cfg.audio.sample_rate,
                                          min_duration=d.min_duration, workers=max(1, d.num_workers), drop=True)
        if len(bad):
            log.warning("dropped %d unreadable or too-short files (first: %s: %s)", len(bad),
                        bad.iloc[0]["path"], bad.iloc[0]["reason"])
    return manifest


def split_train_val(cfg: Config, manifest: Manifest, folds: np.ndarray | None = None) -> tuple[Manifest, Manifest]:
    """Training and validation parts: by ``data.split_column`` when set, else by fold ``train.val_fold``.

    ``folds`` is a fold per row (from :func:`nfaudio.cv.assign_folds`); required without a split column.
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


def git_commit() -> str | None:
    """The commit of the nfaudio checkout, when it is one."""
    root = Path(nfaudio.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_run_info(out_dir: Path, cfg: Config, extra: dict[str, Any] | None = None) -> None:
    """``config.yaml`` (resolved) and ``run.json`` (nfaudio version, git commit, seed, ...)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out_dir / "config.yaml")
    info = {"nfaudio_version": nfaudio.__version__, "git_commit": git_commit(), **(extra or {})}
    write_json(out_dir / "run.json", info, default=str)
