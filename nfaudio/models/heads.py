"""Classification heads on ``(B, C_feat, F', T')`` backbone features; every head returns clip and frame logits.

- :class:`SEDHead`: attention sound-event-detection head after PANNs (Kong et al. 2020, "PANNs:
  Large-Scale Pretrained Audio Neural Networks for Audio Pattern Recognition", decision-level attention):
  pool over frequency, smooth over time (max + avg 1-D pooling), dropout, 1x1 conv + ReLU, then two 1x1
  convs ``att`` and ``cla``. The clip logit is the attention-weighted mean of the frame logits,
  ``clip_k = sum_t softmax_t(a_kt) * z_kt``, with ``a = c * tanh(att(x) / c)`` (a soft clamp to
  ``(-c, c)``) and ``z = cla(x)``. PANNs weights sigmoid probabilities instead; weighting logits keeps the
  output a logit (for ``BCEWithLogits``), and ``sigmoid(clip_k)`` lies between the smallest and the
  largest frame probability of class ``k``.
- :class:`PooledHead`: global pooling over frequency and time, dropout and a linear layer; its frame
  logits are the same linear layer applied to each time frame pooled over frequency only.

Every head also gives a window embedding (:meth:`SEDHead.forward_embedding`, :meth:`PooledHead.forward_embedding`),
the pooled features its class projections see, ``embedding_dim`` wide:

- SED: the time mean of the hidden activations ``h (B, W, T')`` that ``att`` and ``cla`` read (after the
  frequency pooling, the time smoothing and the 1x1 conv + ReLU; without a hidden layer, the smoothed pooled
  backbone features). ``cla`` is linear, so ``cla(embedding)`` is exactly the time mean of the frame logits; the
  clip logit weights the frames per class (attention), so it equals ``cla(embedding)`` only where the attention
  is uniform over time (e.g. ``att`` all zeros, or a single frame).
- Pooled: the globally pooled backbone features ``(B, C_feat)``; ``fc(embedding)`` is exactly the clip logit.

Dropout is the identity in eval mode, in which embeddings are computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nfaudio.models.registry import POOLINGS, ModelConfig

__all__ = ["Pool", "PooledHead", "SEDHead", "build_head"]


class Pool(nn.Module):
    """Reduce a tensor over given dims: "avg", "max", "avgmax" (``(avg + max) / 2``) or "gem".

    GeM (Radenović et al. 2018) is ``mean(clamp(x, eps) ** p) ** (1 / p)`` with a learnable ``p``.

    Args:
        mode: one of :data:`~nfaudio.models.registry.POOLINGS`.
        p: initial GeM exponent.
        eps: GeM clamp floor.

    Raises:
        ValueError: unknown mode or ``p <= 0``.
    """

    def __init__(self, mode: str = "avg", p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
        if p <= 0:
            raise ValueError(f"GeM p must be > 0, got {p}")
        self.mode = mode
        self.eps = eps
        self.p = nn.Parameter(torch.tensor([float(p)])) if mode == "gem" else None

    def forward(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Reduce ``x`` over ``dims`` (removed from the shape)."""
        if self.mode == "avg":
            return x.mean(dim=dims)
        if self.mode == "max":
            return x.amax(dim=dims)
        if self.mode == "avgmax":
            return 0.5 * (x.mean(dim=dims) + x.amax(dim=dims))
        p = self.p.clamp(min=1e-3)
        return x.clamp(min=self.eps).pow(p).mean(dim=dims).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", eps={self.eps}" if self.mode == "gem" else "")


def _init(layer: nn.Module) -> None:
    """Xavier-uniform weight, zero bias (as PANNs initialises its head)."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class SEDHead(nn.Module):
    """Attention SED head (see the module docstring for the formulation).

    Args:
        in_features: backbone channels ``C_feat``.
        num_classes: classes ``K``.
        pooling: pooling over frequency.
        hidden: width of the 1x1 conv + ReLU; ``None`` means ``in_features``, 0 removes it.
        smoothing: kernel of the max + avg pooling over time (odd; 1 disables).
        drop_rate: dropout before and after the hidden layer.
        att_clamp: soft clamp ``c`` of the attention logits.

    Shape:
        input ``(B, C_feat, F', T')``; returns ``clip (B, K)`` and ``frame (B, T', K)`` logits.

    Attributes:
        embedding_dim: width ``W`` of :meth:`forward_embedding` (``hidden``, or ``in_features`` without it).
    """

    def __init__(self, in_features: int, num_classes: int, pooling: str = "avg", hidden: int | None = None,
                 smoothing: int = 3, drop_rate: float = 0.0, att_clamp: float = 10.0) -> None:
        super().__init__()
        if smoothing < 1 or smoothing % 2 == 0:
            raise ValueError(f"smoothing must be an odd kernel size >= 1, got {smoothing}")
        hidden = in_features if hidden is None else hidden
        self.pool = Pool(pooling)
        self.smoothing = smoothing
        self.att_clamp = float(att_clamp)
        self.drop = nn.Dropout(drop_rate)
        if hidden:
            self.fc = nn.Conv1d(in_features, hidden, kernel_size=1)
            _init(self.fc)
            width = hidden
        else:
            self.fc = None
            width = in_features
        self.att = nn.Conv1d(width, num_classes, kernel_size=1)
        self.cla = nn.Conv1d(width, num_classes, kernel_size=1)
        self.embedding_dim = width
        _init(self.att)
        _init(self.cla)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, C_feat, F', T')``. Returns the activations ``att`` and ``cla`` read, ``(B, W, T')``."""
        x = self.pool(x, dims=(2,))  # (B, C_feat, T')
        if self.smoothing > 1:
            k, pad = self.smoothing, self.smoothing // 2
            x = F.max_pool1d(x, k, stride=1, padding=pad) + F.avg_pool1d(x, k, stride=1, padding=pad)  # (B, C, T')
        x = self.drop(x)
        if self.fc is not None:
            x = self.drop(F.relu(self.fc(x)))  # (B, hidden, T')
        return x

    def logits(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: h ``(B, W, T')`` from :meth:`hidden`. Returns ``(clip (B, K), frame (B, T', K))`` logits."""
        c = self.att_clamp
        att = c * torch.tanh(self.att(h) / c)  # (B, K, T')
        weights = torch.softmax(att, dim=-1)  # (B, K, T'), sums to 1 over time
        frame = self.cla(h)  # (B, K, T')
        clip = (weights * frame).sum(dim=-1)  # (B, K)
        return clip, frame.transpose(1, 2)  # (B, K), (B, T', K)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x ``(B, C_feat, F', T')``. Returns ``(clip (B, K), frame (B, T', K))`` logits."""
        return self.logits(self.hidden(x))

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, C_feat, F', T')``. Returns the embedding ``(B, W)``: the time mean of :meth:`hidden`."""
        return self.hidden(x).mean(dim=-1)  # (B, W, T') -> (B, W)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass: ``(clip (B, K), frame (B, T', K), embedding (B, W))``."""
        h = self.hidden(x)  # (B, W, T')
        return (*self.logits(h), h.mean(dim=-1))

    def classifier_modules(self) -> list[nn.Module]:
        """The class projections (excluded from AGC): ``att`` and ``cla``."""
        return [self.att, self.cla]

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}, att_clamp={self.att_clamp}"


class PooledHead(nn.Module):
    """Global pooling + dropout + linear; frame logits from the same linear layer per time frame.

    Args:
        in_features: backbone channels ``C_feat``.
        num_classes: classes ``K``.
        pooling: pooling over frequency and time (over frequency only for the frame logits).
        drop_rate: dropout before the linear layer.

    Shape:
        input ``(B, C_feat, F', T')``; returns ``clip (B, K)`` and ``frame (B, T', K)`` logits.

    Attributes:
        embedding_dim: width of :meth:`forward_embedding` (``in_features``).
    """

    def __init__(self, in_features: int, num_classes: int, pooling: str = "avg", drop_rate: float = 0.0) -> None:
        super().__init__()
        self.pool = Pool(pooling)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)
        self.embedding_dim = in_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x ``(B, C_feat, F', T')``. Returns ``(clip (B, K), frame (B, T', K))`` logits."""
        return self.forward_all(x)[:2]

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, C_feat, F', T')``. Returns the embedding ``(B, C_feat)``: the globally pooled features."""
        return self.pool(x, dims=(2, 3))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass: ``(clip (B, K), frame (B, T', K), embedding (B, C_feat))``."""
        emb = self.pool(x, dims=(2, 3))  # (B, C_feat)
        frames = self.pool(x, dims=(2,)).transpose(1, 2)  # (B, C_feat, T') -> (B, T', C_feat)
        return self.fc(self.drop(emb)), self.fc(self.drop(frames)), emb  # (B, K), (B, T', K), (B, C_feat)

    def classifier_modules(self) -> list[nn.Module]:
        """The class projection (excluded from AGC): ``fc``."""
        return [self.fc]


def build_head(config: ModelConfig, in_features: int) -> SEDHead | PooledHead:
    """The head of a config on ``in_features`` backbone channels."""
    if config.head == "sed":
        return SEDHead(in_features, config.num_classes, pooling=config.pooling, hidden=config.head_hidden,
                       smoothing=config.smoothing, drop_rate=config.drop_rate, att_clamp=config.att_clamp)
    return PooledHead(in_features, config.num_classes, pooling=config.pooling, drop_rate=config.drop_rate)
