"""Training: :func:`fit` one train/validation split, :func:`train_from_config` a recipe (``nfaudio train``).

Modules: :mod:`~nfaudio.training.trainer` (the loop, validation, resume), :mod:`~nfaudio.training.build` (model,
augmentations, optimizer and schedule from a recipe), :mod:`~nfaudio.training.losses` (clip + frame losses),
:mod:`~nfaudio.training.loggers` (history, TensorBoard, W&B, curves), :mod:`~nfaudio.training.state` (seeding,
RNG state).
"""

from nfaudio.training.build import build_augment, build_model, build_optimizer, check_model
from nfaudio.training.losses import ClipFrameLoss
from nfaudio.training.trainer import FitResult, evaluate, fit, train_from_config

__all__ = ["ClipFrameLoss", "FitResult", "build_augment", "build_model", "build_optimizer", "check_model",
           "evaluate", "fit", "train_from_config"]
