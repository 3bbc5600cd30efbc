"""Objects a recipe describes: the model (frontend and SpecAugment inside it), the waveform augmentations, the
optimizer and the learning-rate schedule. ``nfaudio train``, ``nfaudio cv`` and the Python API all build them here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nfaudio.augment import AddNoise, BackgroundNoise, Compose, Gain, TimeShift
from nfaudio.choices import OPTIMIZERS
from nfaudio.config import Config
from nfaudio.models import AudioClassifier, create_model
from nfaudio.models.registry import NFAUDIO_VARIANTS

log = logging.getLogger(__name__)

__all__ = ["build_augment", "build_model", "build_optimizer", "check_model", "cosine_lambda", "frontend_kwargs",
           "is_normalizer_free"]


def frontend_kwargs(cfg: Config) -> dict[str, Any]:
    """LogMel arguments from the ``audio`` and ``frontend`` sections."""
    f = cfg.frontend
    return dict(sample_rate=cfg.audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                win_length=f.win_length, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, power=f.power,
                top_db=f.top_db, normalize=f.normalize, mean=f.mean, std=f.std)


def build_model(cfg: Config, num_classes: int) -> AudioClassifier:
    """The model of a recipe (frontend and SpecAugment inside it). The recipe's ``audio``/``frontend`` sections
    and SpecAugment settings always apply; ``model`` keys left null keep the variant's own values."""
    m, aug = cfg.model, cfg.augment
    spec_augment = None
    if aug.specaug_p > 0:
        spec_augment = dict(freq_masks=aug.specaug_masks, freq_width=aug.specaug_freq_width,
                            time_masks=aug.specaug_masks, time_width=aug.specaug_time_width, p=aug.specaug_p)
    row = NFAUDIO_VARIANTS.get(m.name, {})
    replaced = [key for key in ("frontend", "spec_augment") if key in row]
    if replaced:
        log.info("%s: the recipe's frontend and SpecAugment settings replace the variant's %s", m.name,
                 " and ".join(replaced))
    return create_model(m.name, num_classes=num_classes, pretrained=m.pretrained, head=m.head,
                        weights_dir=m.weights_dir, weights_cache=m.weights_cache, frontend=frontend_kwargs(cfg),
                        spec_augment=spec_augment, **_model_options(cfg))


def _model_options(cfg: Config) -> dict[str, Any]:
    """The ``model`` section's options for :func:`~nfaudio.models.create_model`; a key left null keeps the model
    variant's own value (the registry row is the one source of truth for what the recipe does not set)."""
    m = cfg.model
    options = {"pooling": m.pooling, "drop_path_rate": m.drop_path_rate, "drop_rate": m.drop_rate,
               "stem_stride": m.stem_stride, "channels_last": m.channels_last}
    return {k: v for k, v in options.items() if v is not None}


def check_model(cfg: Config) -> None:
    """Check the recipe's model name and options without building the network (a quick look-up in the registry).

    Raises:
        ValueError: unknown model name (with close matches) or an invalid option.
    """
    from nfaudio.models.registry import resolve_config

    resolve_config(cfg.model.name, num_classes=1, head=cfg.model.head, frontend=frontend_kwargs(cfg),
                   **_model_options(cfg))


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


def is_normalizer_free(module: nn.Module) -> bool:
    """True when the module holds no batch-norm layer (NFNets; AGC replaces what BN provided)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def cosine_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` (a LambdaLR multiplier)."""

    def fn(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def build_optimizer(model: AudioClassifier, cfg: Config) -> torch.optim.Optimizer:
    """SGD-Nesterov or AdamW; backbone at ``lr * backbone_lr_mult``; no weight decay on 1-D params."""
    o = cfg.optim
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    for p in model.parameters():
        key = (id(p) in backbone_ids, p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    param_groups = [
        {"params": ps, "lr": o.lr * (o.backbone_lr_mult if is_bb else 1.0),
         "weight_decay": 0.0 if no_decay else o.weight_decay}
        for (is_bb, no_decay), ps in sorted(groups.items())
    ]
    if o.name == "sgd":
        return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    if o.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=o.lr)
    raise ValueError(f"unknown optimizer '{o.name}'; choose one of {OPTIMIZERS}")
