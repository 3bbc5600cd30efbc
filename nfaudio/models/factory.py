"""The one factory (:func:`create_model`) and nfaudio's own checkpoints (:func:`save_model` / :func:`load_model`).

A checkpoint is a ``torch.save`` dict ``{"config": asdict(ModelConfig), "state_dict": ...,
"nfaudio_version": ..., **extra}``; :func:`load_model` rebuilds the exact model from it.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import nfaudio
from nfaudio.fileio import torch_save
from nfaudio.models.classifier import AudioClassifier
from nfaudio.models.registry import ModelConfig, resolve_config

__all__ = ["create_model", "load_checkpoint", "load_model", "prediction_meta", "save_model"]

log = logging.getLogger(__name__)

_RESERVED = ("config", "state_dict", "nfaudio_version")


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool | str | os.PathLike | None = False,
    head: str | None = "sed",
    weights_dir: str | os.PathLike | None = None,
    weights_cache: str | os.PathLike | None = None,
    **kwargs: Any,
) -> AudioClassifier:
    """Build an :class:`AudioClassifier` from a registry name (``list_models()``) or any timm model name.

    Args:
        name: e.g. ``"eca_nfnet_l0"``, ``"nfaudio_tiny"``, ``"resnet50"``.
        num_classes: number of output classes.
        pretrained: ``True``: timm's ImageNet weights (hub or local cache; the RGB stem summed to one
            channel); a path (``.pth``/``.pt``/``.bin``/``.safetensors``): weights from that file, adapted
            the same way; ``False``/``None``/``""``: random initialisation.
        head: "sed" or "pooled"; ``None`` keeps the variant's head.
        weights_dir: with ``pretrained=True``, a folder of weight files named by model, looked in first
            (``<backbone>.safetensors|.pth|.pt|.bin`` or ``<backbone>/model.safetensors``; else
            ``$NFAUDIO_WEIGHTS_DIR``).
        weights_cache: with ``pretrained=True``, a Hugging Face hub cache in the hub's layout (else
            ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, huggingface_hub's default); ``HF_HUB_OFFLINE=1`` never downloads.
        **kwargs: other :class:`~nfaudio.models.registry.ModelConfig` fields (``pooling``, ``frontend``,
            ``spec_augment``, ``drop_rate``, ``drop_path_rate``, ``stem_stride``, ``channels_last``, ...).

    Returns:
        The model on the CPU, in training mode.

    Raises:
        ValueError: unknown name (with close matches) or an invalid option value.
        TypeError: an unknown option.
        PretrainedWeightsError: pretrained weights unavailable (e.g. offline) or not fitting.

    Example:
        >>> model = create_model("nfaudio_tiny", num_classes=10)
        >>> out = model(torch.zeros(2, 32000 * 5))
        >>> out.clip.shape, out.frame.shape[0]
        (torch.Size([2, 10]), 2)
    """
    config = resolve_config(name, num_classes, head=head, **kwargs)
    return AudioClassifier(config, pretrained=pretrained or False, weights_dir=weights_dir,
                           weights_cache=weights_cache)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, paths -> str (recursively), so a checkpoint loads weights_only."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _unwrap(model: nn.Module) -> AudioClassifier:
    for attr in ("module", "_orig_mod"):  # DataParallel/DDP, torch.compile
        model = getattr(model, attr, model)
    if not isinstance(model, AudioClassifier):
        raise TypeError(f"save_model expects an AudioClassifier, got {type(model).__name__}")
    return model


def save_model(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Save a model with its config (atomically: a temporary file, then a rename).

    Args:
        model: an :class:`AudioClassifier` (DataParallel/DDP/compiled wrappers are unwrapped).
        path: output file (parent folders are created).
        **extra: more entries (e.g. ``classes=[...]``, ``epoch=3``); numpy scalars become Python
            numbers and paths strings.

    Returns:
        The path written.

    Raises:
        ValueError: ``extra`` uses a reserved key ("config", "state_dict", "nfaudio_version").
        TypeError: not an AudioClassifier.
    """
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_model: reserved key(s) {clash} in extra")
    model = _unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"config": model.config.to_dict(), "state_dict": model.state_dict(),
            "nfaudio_version": nfaudio.__version__, **_plain(extra)}
    torch_save(ckpt, path)
    return path


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               weights_only: bool = True) -> AudioClassifier:
    """Rebuild a model saved by :func:`save_model` (same config, same weights, same outputs).

    Same as ``load_checkpoint(path)[0]``; see :func:`load_checkpoint` for the arguments and errors.
    """
    return load_checkpoint(path, map_location, weights_only)[0]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    weights_only: bool = True) -> tuple[AudioClassifier, dict[str, Any]]:
    """Read a :func:`save_model` checkpoint once: the rebuilt model and the ``extra`` entries saved with it
    (e.g. ``epoch``, ``score``), with the prediction metadata of :func:`prediction_meta` filled in (``classes``,
    ``duration``, ``activation``, ``sample_rate``, ``fmin``, ``fmax``). The one checkpoint loader of nfaudio.

    Args:
        path: checkpoint file.
        map_location: where ``torch.load`` puts the tensors while reading; the model is built on the CPU
            (move it with ``.to(device)``).
        weights_only: ``torch.load(weights_only=...)``; pass ``False`` only for a file you trust that holds
            other Python objects.

    Returns:
        ``(model in eval mode, extra dict)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an nfaudio checkpoint, or unreadable with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds objects that weights_only=True refuses ({err}); if you trust the file, "
                         "call load_model(path, weights_only=False)") from err
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not an nfaudio checkpoint (no 'config'/'state_dict'); for timm or "
                         "ImageNet weights use create_model(name, num_classes, pretrained=path)")
    version = ckpt.get("nfaudio_version")
    if version != nfaudio.__version__:
        log.info("%s was saved by nfaudio %s (running %s)", path, version, nfaudio.__version__)
    model = AudioClassifier(ModelConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    extra = {k: v for k, v in ckpt.items() if k not in ("config", "state_dict")}
    if not extra.get("classes"):
        log.warning("%s stores no class names; calling them class_0..class_%d", path, model.num_classes - 1)
    extra.update(prediction_meta(model, extra.get("classes"), extra.get("duration"), extra.get("activation")))
    return model.eval(), extra


def prediction_meta(model: AudioClassifier, classes: Sequence[str] | None = None, duration: float | None = None,
                    activation: str | None = None) -> dict[str, Any]:
    """What scoring a model needs besides its weights: ``classes`` (default ``class_<i>``), ``duration`` (window
    seconds, default 5), ``activation`` (default "sigmoid"), and the frontend's ``sample_rate``, ``fmin``, ``fmax``.

    Raises:
        ValueError: the number of class names differs from the model's outputs.
    """
    classes = [str(c) for c in classes] if classes else [f"class_{i}" for i in range(model.num_classes)]
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    fe = model.frontend
    return {"classes": classes, "duration": float(duration or 5.0), "activation": activation or "sigmoid",
            "sample_rate": int(fe.sample_rate), "fmin": float(fe.fmin), "fmax": float(fe.fmax)}
