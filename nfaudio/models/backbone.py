"""One-channel timm backbones for log-mel images: NFNets (Brock et al. 2021) and any other timm model.

The backbone is built with ``in_chans=1, num_classes=0, global_pool=""`` and run through
``forward_features``, so it maps ``(B, 1, n_mels, frames)`` to ``(B, C_feat, F', T')``. Everything about
its geometry is read from the model, never from its name: the first conv from timm's model metadata
(``pretrained_cfg["first_conv"]``), the time reduction from ``feature_info`` (or, where a model has none,
from a dry run).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from nfaudio.models.pretrained import (
    PretrainedWeightsError,
    create_pretrained_timm,
    first_conv_names,
    load_backbone_weights,
    weights_in_dir,
)
from nfaudio.models.registry import LOCAL_BACKBONES, ModelConfig

__all__ = ["Backbone", "build_backbone", "create_timm_backbone"]

log = logging.getLogger(__name__)


def create_timm_backbone(name: str, pretrained: bool = False, weights_dir: str | os.PathLike | None = None,
                         weights_cache: str | os.PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Create a timm model, or an nfaudio :data:`LOCAL_BACKBONES` NormFreeNet, by name.

    Args:
        name: timm model name or a :data:`LOCAL_BACKBONES` key.
        pretrained: load ImageNet weights: from ``weights_dir`` when it holds a file named by the model (see
            :func:`~nfaudio.models.pretrained.weights_in_dir`; for a local backbone the only source), else
            through timm's hub (see :func:`create_pretrained_timm`).
        weights_dir: a folder of weight files named by model (else ``$NFAUDIO_WEIGHTS_DIR``).
        weights_cache: a Hugging Face hub cache (else ``$HF_HUB_CACHE`` / ``$HF_HOME/hub``).
        **kwargs: ``timm.create_model`` arguments (``in_chans``, ``num_classes``, ...; ``num_classes=0`` for
            weights from ``weights_dir``).

    Raises:
        PretrainedWeightsError: pretrained weights requested but unavailable (the message names where it looked).
    """
    import timm

    looked = ""
    if pretrained:
        found, looked = weights_in_dir(name, weights_dir)
        if found is not None:
            model = create_timm_backbone(name, pretrained=False, **kwargs)
            log.info("ImageNet weights of %s from %s", name, found)
            load_backbone_weights(model, found)
            return model
    if name in LOCAL_BACKBONES:
        if pretrained:
            raise PretrainedWeightsError(
                f"{name!r} is an nfaudio backbone without ImageNet weights" + (f"; {looked}" if looked else "")
                + f"; put your own as {name}.safetensors in model.weights_dir, or pass pretrained=False")
        from timm.models import build_model_with_cfg
        from timm.models.nfnet import NormFreeNet

        make_cfg, meta = LOCAL_BACKBONES[name]
        return build_model_with_cfg(NormFreeNet, name, pretrained=False, model_cfg=make_cfg(),
                                    pretrained_cfg=dict(meta), feature_cfg=dict(flatten_sequential=True),
                                    **kwargs)
    if pretrained:
        return create_pretrained_timm(name, weights_cache=weights_cache, looked=looked, **kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The stem conv: the first of :func:`first_conv_names`, else the first ``Conv2d`` in module order."""
    names = first_conv_names(model)
    if names and names[0]:
        module = model.get_submodule(names[0])
        if isinstance(module, nn.Conv2d):
            return names[0], module
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d layer")


def _feature_info_reduction(model: nn.Module) -> int | None:
    """Reduction of the last feature map from timm's ``feature_info`` (list of dicts or FeatureInfo)."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and "reduction" in info[-1]:
        return int(info[-1]["reduction"])
    if info is not None and hasattr(info, "reduction"):
        return int(info.reduction()[-1])
    return None


@torch.no_grad()
def _measured_time_reduction(model: nn.Module, in_chans: int, probe: int = 256) -> int:
    """Time reduction by a dry run on a ``(1, in_chans, 64, probe)`` input."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_chans, 64, probe, device=param.device, dtype=param.dtype)
        frames = model.forward_features(x).shape[-1]  # (1, C, F', T')
    finally:
        model.train(was_training)
    return max(1, round(probe / frames))


class Backbone(nn.Module):
    """A timm model as a spectrogram feature extractor.

    Args:
        model: timm model built with ``num_classes=0, global_pool=""``.
        stem_stride: new stride of the first conv (``None`` keeps it). The conv's padding is kept, which
            is what "same" padding gives for the odd kernels of timm stems.
        channels_last: convert the model and each input to ``torch.channels_last``.

    Attributes:
        num_features: channels ``C_feat`` of the output.
        time_reduction: input frames per output frame.
        stem_name: module name of the first conv.

    Shape:
        input ``(B, in_chans, n_mels, frames)``; output ``(B, C_feat, F', T')``.
    """

    def __init__(self, model: nn.Module, stem_stride: int | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.num_features = int(model.num_features)
        self.channels_last = bool(channels_last)
        self.stem_name, stem = _first_conv(model)
        reduction = _feature_info_reduction(model)
        if stem_stride is not None and (stem_stride, stem_stride) != tuple(stem.stride):
            old = stem.stride[-1]  # time is the last axis
            stem.stride = (stem_stride, stem_stride)
            if reduction is not None:
                if (reduction * stem_stride) % old:
                    reduction = None  # not a whole number of frames: measure instead
                else:
                    reduction = reduction * stem_stride // old
        self.time_reduction = reduction or _measured_time_reduction(model, stem.in_channels * stem.groups)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, in_chans, n_mels, frames)``. Returns features ``(B, C_feat, F', T')``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model.forward_features(x)

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, time_reduction={self.time_reduction}, "
                f"stem={self.stem_name!r}, channels_last={self.channels_last}")


def build_backbone(config: ModelConfig, pretrained: bool | str | os.PathLike = False,
                   weights_dir: str | os.PathLike | None = None,
                   weights_cache: str | os.PathLike | None = None) -> Backbone:
    """The one-channel backbone of a config.

    Args:
        config: model config (``backbone``, ``drop_path_rate``, ``stem_stride``, ``channels_last``,
            ``backbone_kwargs``).
        pretrained: ``True`` for timm's ImageNet weights (hub or local cache), a path to a weights file,
            or ``False``/``None``/``""`` for random initialisation.
        weights_dir: with ``pretrained=True``, a folder of weight files named by model (looked in first).
        weights_cache: with ``pretrained=True``, the Hugging Face hub cache to read.

    Raises:
        PretrainedWeightsError: weights unavailable or not fitting the architecture.
    """
    kwargs = dict(in_chans=1, num_classes=0, global_pool="", **config.backbone_kwargs)
    if config.drop_path_rate:
        kwargs["drop_path_rate"] = config.drop_path_rate
    from_hub = pretrained is True
    model = create_timm_backbone(config.backbone, pretrained=from_hub, weights_dir=weights_dir,
                                 weights_cache=weights_cache, **kwargs)
    if pretrained and not from_hub:
        if not isinstance(pretrained, (str, os.PathLike)):
            raise TypeError(f"pretrained must be a bool or a path, got {type(pretrained).__name__}")
        load_backbone_weights(model, pretrained)
    return Backbone(model, stem_stride=config.stem_stride, channels_last=config.channels_last)
