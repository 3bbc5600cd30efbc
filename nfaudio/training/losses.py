"""Losses on the clip and frame logits of nfaudio models.

The SED loss follows the BirdCLEF 2021-2023 winning solutions: a clip loss on the attention-pooled
logits plus a weighted loss on the maximum over frames, so that the frame scores learn to localise.
Focal loss: Lin et al. 2017, "Focal Loss for Dense Object Detection".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nfaudio.choices import LOSSES

__all__ = ["ClipFrameLoss", "focal_bce_with_logits"]


def focal_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25
) -> torch.Tensor:
    """Element-wise binary focal loss on logits (soft targets allowed). Returns the unreduced loss.

    ``alpha < 0`` disables the class-balance weighting.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob = torch.sigmoid(logits)
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


class ClipFrameLoss(nn.Module):
    """Loss on ``ModelOutput(clip, frame)``: ``loss(clip) + frame_weight * loss(max over frames)``.

    Args:
        name: ``bce`` (multi-label), ``focal`` (multi-label focal) or ``ce`` (single-label softmax
            cross-entropy; targets are renormalised to sum to 1 per row).
        frame_weight: weight of the max-over-frames term (0 disables it).
        focal_gamma, focal_alpha: focal loss parameters.

    Shapes: clip ``(B, C)``, frame ``(B, F, C)``, targets ``(B, C)``, weights ``(B,)`` or None.
    Returns the weighted mean over the batch (a scalar).
    """

    def __init__(self, name: str = "bce", frame_weight: float = 0.5, focal_gamma: float = 2.0,
                 focal_alpha: float = 0.25) -> None:
        super().__init__()
        if name not in LOSSES:
            raise ValueError(f"unknown loss '{name}'; choose one of {', '.join(LOSSES)}")
        if frame_weight < 0:
            raise ValueError(f"frame_weight must be >= 0, got {frame_weight}")
        self.name = name
        self.frame_weight = frame_weight
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha

    def _per_example(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.name == "ce":
            # multi-hot / smoothed targets become a distribution over classes
            dist = targets / targets.sum(-1, keepdim=True).clamp_min(1e-8)
            return torch.sum(-dist * F.log_softmax(logits, dim=-1), dim=-1)  # (B,)
        if self.name == "focal":
            return focal_bce_with_logits(logits, targets, self.focal_gamma, self.focal_alpha).sum(-1)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)

    def forward(self, clip: torch.Tensor, frame: torch.Tensor, targets: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        loss = self._per_example(clip.float(), targets)  # (B,)
        if self.frame_weight > 0:
            frame_max = frame.float().amax(dim=1)  # (B, F, C) -> (B, C)
            loss = loss + self.frame_weight * self._per_example(frame_max, targets)
        if weights is None:
            return loss.mean()
        weights = weights.to(loss.dtype)
        return (loss * weights).sum() / weights.sum().clamp_min(1e-8)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, frame_weight={self.frame_weight}"
