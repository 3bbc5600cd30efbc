"""The audio classifier: waveform -> log-mel -> (SpecAugment) -> backbone -> head -> clip and frame logits.

The spectrogram frontend lives inside the model (as in PANNs, Kong et al. 2020) so training, evaluation,
prediction and export all see audio the same way, on whatever device the model is moved to.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import torch
from torch import nn

from nfaudio.frontend import LogMel, SpecAugment
from nfaudio.models.backbone import Backbone, build_backbone
from nfaudio.models.heads import build_head
from nfaudio.models.registry import ModelConfig

__all__ = ["AudioClassifier", "EmbeddingOutput", "ModelOutput"]


class ModelOutput(NamedTuple):
    """Logits (no sigmoid) of a batch: ``clip (B, C)`` and ``frame (B, F, C)``."""

    clip: torch.Tensor
    frame: torch.Tensor


class EmbeddingOutput(NamedTuple):
    """Logits and embeddings of a batch from one pass: ``clip (B, C)``, ``frame (B, F, C)``, ``embedding (B, D)``."""

    clip: torch.Tensor
    frame: torch.Tensor
    embedding: torch.Tensor


class AudioClassifier(nn.Module):
    """``frontend -> spec_augment -> backbone -> head``; waveform in, :class:`ModelOutput` logits out.

    Build it with :func:`nfaudio.models.create_model`; the constructor is for an explicit config.

    Args:
        config: the model config (kept as ``.config``; saved with checkpoints).
        pretrained: ``True`` for timm's ImageNet weights, a weights-file path, or ``False``.
        weights_dir, weights_cache: where ``pretrained=True`` looks offline (see :func:`~nfaudio.models.create_model`).

    Attributes:
        frontend: :class:`~nfaudio.frontend.LogMel`.
        spec_augment: :class:`~nfaudio.frontend.SpecAugment` (identity in eval mode) or ``nn.Identity``.
        backbone: :class:`~nfaudio.models.backbone.Backbone`.
        head: :class:`~nfaudio.models.heads.SEDHead` or :class:`~nfaudio.models.heads.PooledHead`.

    Shape:
        input ``(B, T)`` waveform at ``frontend.sample_rate``; output ``clip (B, C)``,
        ``frame (B, F, C)`` with ``F`` backbone frames of :attr:`frame_seconds` each.

    Raises:
        PretrainedWeightsError: pretrained weights unavailable or not fitting.
        ValueError: an invalid frontend/SpecAugment argument.
    """

    def __init__(self, config: ModelConfig, pretrained: bool | str | os.PathLike = False,
                 weights_dir: str | os.PathLike | None = None, weights_cache: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.config = config
        self.frontend = LogMel(**config.frontend)
        self.spec_augment = SpecAugment(**config.spec_augment) if config.spec_augment is not None else nn.Identity()
        self.backbone: Backbone = build_backbone(config, pretrained=pretrained, weights_dir=weights_dir,
                                                 weights_cache=weights_cache)
        self.head = build_head(config, self.backbone.num_features)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def frame_seconds(self) -> float:
        """Seconds per output frame: backbone time reduction x hop length / sample rate."""
        return self.backbone.time_reduction * self.frontend.hop_length / self.frontend.sample_rate

    def forward_features(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave ``(B, T)``. Returns backbone features ``(B, C_feat, F', T')``."""
        if wave.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wave.shape)}")
        spec = self.frontend(wave)  # (B, 1, n_mels, frames)
        spec = self.spec_augment(spec)  # (B, 1, n_mels, frames)
        return self.backbone(spec)  # (B, C_feat, F', T')

    def forward_head(self, features: torch.Tensor) -> ModelOutput:
        """Args: features ``(B, C_feat, F', T')``. Returns clip ``(B, C)`` and frame ``(B, T', C)`` logits."""
        clip, frame = self.head(features)
        return ModelOutput(clip=clip, frame=frame)

    def forward_spectrogram(self, spec: torch.Tensor) -> ModelOutput:
        """Everything after the frontend: ``spec_augment -> backbone -> head``, so that ``forward(wave) ==
        forward_spectrogram(frontend(wave))`` (an ensemble shares one frontend this way).

        Args: spec ``(B, 1, n_mels, frames)`` from :attr:`frontend`. Returns :class:`ModelOutput` logits.
        """
        return self.forward_head(self.backbone(self.spec_augment(spec)))

    def forward(self, wave: torch.Tensor) -> ModelOutput:
        """Args: wave ``(B, T)``. Returns :class:`ModelOutput` logits."""
        return self.forward_head(self.forward_features(wave))

    @property
    def embedding_dim(self) -> int:
        """Width ``D`` of :meth:`forward_embedding`."""
        return int(self.head.embedding_dim)

    def forward_embedding(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave ``(B, T)``. Returns the window embeddings ``(B, D)``: the pooled features the head's class
        projections see (SED head: the time mean of its hidden activations; pooled head: the globally pooled
        backbone features; see :mod:`nfaudio.models.heads` for what the head computes from them)."""
        return self.head.forward_embedding(self.forward_features(wave))

    def forward_with_embedding(self, wave: torch.Tensor) -> EmbeddingOutput:
        """Args: wave ``(B, T)``. Returns clip and frame logits and the embeddings in one pass."""
        return EmbeddingOutput(*self.head.forward_all(self.forward_features(wave)))

    def forward_spectrogram_with_embedding(self, spec: torch.Tensor) -> EmbeddingOutput:
        """:meth:`forward_with_embedding` after the frontend (``spec`` from :attr:`frontend`)."""
        return EmbeddingOutput(*self.head.forward_all(self.backbone(self.spec_augment(spec))))

    def classifier_modules(self) -> list[nn.Module]:
        """The head's final class projections (SED: ``att`` and ``cla``; pooled: ``fc``), which AGC skips."""
        return self.head.classifier_modules()

    def head_modules(self) -> list[nn.Module]:
        """Every module after the backbone (e.g. for a separate learning rate)."""
        return [self.head]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` classes (fine-tuning)."""
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        ref = next(self.backbone.parameters())
        self.head = build_head(self.config, self.backbone.num_features).to(device=ref.device, dtype=ref.dtype)
