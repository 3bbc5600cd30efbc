"""Knowledge distillation: a student trained against a teacher's soft predictions (Hinton et al. 2015,
"Distilling the Knowledge in a Neural Network"), blended with the ordinary hard-label loss (recipe section
``distill``).

The teacher (one checkpoint, a run, or a CV run's fold ensemble: the mean of the members' probabilities) scores
every training batch online, on the same augmented waveforms the student sees, in eval mode and without
gradients, so the student may be a different, smaller model (e.g. one ``nfaudio_small`` distilled from a 5-fold
``eca_nfnet_l0`` ensemble for a CPU time budget). With student clip logits ``s``, teacher probabilities ``q`` at
temperature ``T`` and weight ``alpha``::

    loss = (1 - alpha) * hard_loss + alpha * T**2 * distill(s / T, q_T)
    bce: q_T = mean over members of sigmoid(t / T);  distill = mean over classes of BCE(sigmoid(s / T), q_T)
    kl:  q_T = mean over members of softmax(t / T);  distill = sum over classes of q_T (log q_T - log_softmax(s / T))

both averaged over the batch (weighted like the hard loss when sample weights are used). ``T**2`` keeps the
gradient scale of the soft term independent of ``T`` (Hinton et al.). ``bce`` suits multi-label (sigmoid) teachers,
``kl`` single-label (softmax) ones. Soft targets from a pseudo-label table are trained on through the ``pseudo``
section instead (its rows carry the teacher's probabilities).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nfaudio.choices import DISTILL_LOSSES
from nfaudio.models import load_checkpoint
from nfaudio.rundir import find_checkpoints

__all__ = ["Distiller", "distill_loss", "load_teacher"]

log = logging.getLogger(__name__)


def distill_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, kind: str = "bce",
                 temperature: float = 1.0) -> torch.Tensor:
    """Per-example soft loss ``T**2 * distill(s / T, q_T)`` (see the module docstring), shape ``(B,)``.

    ``teacher_probs`` are the teacher's probabilities at temperature ``T`` already (``q_T``).

    Raises:
        ValueError: unknown ``kind`` or ``temperature <= 0``.
    """
    if kind not in DISTILL_LOSSES:
        raise ValueError(f"distillation loss must be one of {DISTILL_LOSSES}, got {kind!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = student_logits.float() / temperature
    q = teacher_probs.float()
    if kind == "bce":
        per = F.binary_cross_entropy_with_logits(s, q, reduction="none").mean(-1)
    else:
        per = torch.sum(torch.xlogy(q, q) - q * F.log_softmax(s, dim=-1), dim=-1)
    return per * temperature**2


def load_teacher(path: str | os.PathLike, classes: Sequence[str], sample_rate: int) -> list[nn.Module]:
    """The teacher's models (every fold of a CV run), in eval mode, their parameters frozen.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: an ONNX file, a teacher with other classes or another sample rate than the student's.
    """
    members = []
    for ckpt in find_checkpoints(path):
        if ckpt.suffix == ".onnx":
            raise ValueError(f"distill.teacher {ckpt}: an ONNX file cannot teach; give its .pt checkpoint or run")
        model, meta = load_checkpoint(ckpt)
        if list(meta["classes"]) != list(classes):
            raise ValueError(f"distill.teacher {ckpt}: its classes differ from the training data's "
                             f"({len(meta['classes'])} vs {len(classes)}, or another order)")
        if int(meta["sample_rate"]) != int(sample_rate):
            raise ValueError(f"distill.teacher {ckpt}: sample rate {meta['sample_rate']} Hz, the student trains at "
                             f"{sample_rate} Hz")
        members.append(model.eval().requires_grad_(False))
    return members


class Distiller(nn.Module):
    """Blends the hard-label loss with the distillation loss against a frozen teacher (module docstring).

    Args:
        teachers: the teacher's models (:func:`load_teacher`), moved to the student's device by ``.to``.
        kind: "bce" or "kl". temperature: ``T > 0``. alpha: weight of the soft term in ``[0, 1]``.

    Raises:
        ValueError: no teacher, or a bad ``kind``, ``temperature`` or ``alpha``.
    """

    def __init__(self, teachers: Sequence[nn.Module], kind: str = "bce", temperature: float = 1.0,
                 alpha: float = 0.5) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("distillation needs at least one teacher model")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill.alpha must be in [0, 1], got {alpha}")
        distill_loss(torch.zeros(1, 1), torch.zeros(1, 1), kind, temperature)  # validates kind and temperature
        self.teachers = nn.ModuleList(teachers)
        self.kind, self.temperature, self.alpha = kind, float(temperature), float(alpha)

    def train(self, mode: bool = True) -> Distiller:
        """The teachers always stay in eval mode (no dropout, drop-path or SpecAugment)."""
        super().train(False)
        return self

    @torch.no_grad()
    def soft_targets(self, wave: torch.Tensor) -> torch.Tensor:
        """The teachers' mean probabilities at temperature ``T`` for a batch of waveforms ``(B, T)``."""
        act = torch.sigmoid if self.kind == "bce" else (lambda z: torch.softmax(z, dim=-1))
        total = None
        for teacher in self.teachers:
            p = act(teacher(wave).clip.float() / self.temperature)
            total = p if total is None else total + p
        return total / len(self.teachers)

    def forward(self, hard_loss: torch.Tensor, student_logits: torch.Tensor, wave: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """``(1 - alpha) * hard_loss + alpha * soft``; ``soft`` weighted by ``weights`` like the hard loss."""
        soft = distill_loss(student_logits, self.soft_targets(wave), self.kind, self.temperature)
        if weights is None:
            soft_mean = soft.mean()
        else:
            w = weights.to(soft.dtype)
            soft_mean = (soft * w).sum() / w.sum().clamp_min(1e-8)
        return (1.0 - self.alpha) * hard_loss + self.alpha * soft_mean

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, temperature={self.temperature}, alpha={self.alpha}, members={len(self.teachers)}"
