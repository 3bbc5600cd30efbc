"""SpecAugment: time and frequency masking of a spectrogram (Park et al. 2019, "SpecAugment: A Simple Data
Augmentation Method for Automatic Speech Recognition"); the identity in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SpecAugment"]


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019); identity in eval mode.

    Each example is augmented with probability ``p``. An augmented example gets ``freq_masks``
    bands of ``[0, freq_width]`` mel bins and ``time_masks`` spans of ``[0, time_width]`` frames
    (widths and starts drawn uniformly, clipped to the spectrogram), filled with the example's
    minimum (``fill="min"``, the top_db floor for a log-mel) or mean (``fill="mean"``).

    Args:
        freq_masks: number of frequency masks per example.
        freq_width: maximum width of a frequency mask in bins.
        time_masks: number of time masks per example.
        time_width: maximum width of a time mask in frames.
        p: probability that an example is augmented.
        fill: "min" or "mean" of each example.
        generator: optional CPU ``torch.Generator`` for reproducible masks (a ``generator`` passed
            to ``forward`` takes precedence).

    Shape:
        input and output ``(B, 1, F, T)``.

    Raises:
        ValueError: on a negative count/width, ``p`` outside [0, 1] or an unknown ``fill``.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 16,
        time_masks: int = 2,
        time_width: int = 32,
        p: float = 1.0,
        fill: str = "min",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ValueError("mask counts and widths must be >= 0")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if fill not in ("min", "mean"):
            raise ValueError(f"fill must be 'min' or 'mean', got {fill!r}")
        self.freq_masks = int(freq_masks)
        self.freq_width = int(freq_width)
        self.time_masks = int(time_masks)
        self.time_width = int(time_width)
        self.p = float(p)
        self.fill = fill
        self.generator = generator

    def _masks(self, batch: int, size: int, count: int, width: int, g: torch.Generator | None) -> torch.Tensor:
        """Boolean mask (B, size): union of ``count`` random spans of width in [0, width]."""
        if count == 0 or width == 0:
            return torch.zeros(batch, size, dtype=torch.bool)
        w = torch.randint(0, min(width, size) + 1, (batch, count), generator=g)
        start = (torch.rand(batch, count, generator=g) * (size - w + 1)).long()
        pos = torch.arange(size)[None, None, :]
        inside = (pos >= start[..., None]) & (pos < (start + w)[..., None])  # (B, count, size)
        return inside.any(dim=1)

    def forward(self, spec: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Args: spec ``(B, 1, F, T)``; generator overrides ``self.generator``. Returns the masked copy."""
        if not self.training or self.p == 0.0:
            return spec
        if spec.dim() != 4:
            raise ValueError(f"SpecAugment expects (B, 1, F, T), got shape {tuple(spec.shape)}")
        g = generator if generator is not None else self.generator
        b, _, n_freq, n_time = spec.shape
        apply = torch.rand(b, generator=g) < self.p  # (B,)
        fmask = self._masks(b, n_freq, self.freq_masks, self.freq_width, g)  # (B, F)
        tmask = self._masks(b, n_time, self.time_masks, self.time_width, g)  # (B, T)
        mask = (fmask[:, :, None] | tmask[:, None, :]) & apply[:, None, None]  # (B, F, T)
        mask = mask[:, None].to(spec.device)  # (B, 1, F, T)
        if self.fill == "min":
            value = spec.amin(dim=(1, 2, 3), keepdim=True)
        else:
            value = spec.mean(dim=(1, 2, 3), keepdim=True)
        return torch.where(mask, value.detach(), spec)

    def extra_repr(self) -> str:
        return (f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, time_masks={self.time_masks}, "
                f"time_width={self.time_width}, p={self.p}, fill={self.fill!r}")
