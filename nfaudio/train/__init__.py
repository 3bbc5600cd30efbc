"""Training: :func:`fit` one train/validation split, :func:`train_from_config` a recipe (``nfaudio train``).

Modules: :mod:`~nfaudio.train.trainer` (the loop, validation, resume), :mod:`~nfaudio.train.build` (model,
augmentations, optimizer and schedule from a recipe), :mod:`~nfaudio.train.losses` (clip + frame losses),
:mod:`~nfaudio.train.loggers` (history, TensorBoard, W&B, curves), :mod:`~nfaudio.train.state` (seeding, RNG state).
"""

from nfaudio.train.build import build_augment, build_model, build_optimizer, check_model
from nfaudio.train.losses import ClipFrameLoss
from nfaudio.train.trainer import FitResult, evaluate, fit, train_from_config

__all__ = ["ClipFrameLoss", "FitResult", "build_augment", "build_model", "build_optimizer", "check_model",
           "evaluate", "fit", "train_from_config"]
