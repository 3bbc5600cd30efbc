"""Waveform augmentations (training only) and batch-level mixup.

Per-example transforms work on numpy float waveforms ``(T,)`` and take an explicit
``np.random.Generator`` (or an int seed), so a data-loader worker can seed them per example,
e.g. ``np.random.default_rng([seed, epoch, index])``. ``Compose`` / ``OneOf`` follow
audiomentations (a probability ``p`` per transform, readable ``repr``) without its global random
state. They are applied only by a training ``AudioDataset`` (``train=True``), never at evaluation
or prediction.

``Mixup`` implements mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization") on a
batch of waveforms. It is an ``nn.Module`` so ``.train()`` / ``.eval()`` switch it on and off; in eval
mode it returns its inputs unchanged. Besides the convex label mix it offers the "max" (OR) label
rule used by BirdCLEF winning solutions, where a mixed clip contains both examples' calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nfaudio.choices import MIXUP_RULES, NOISE_COLORS

__all__ = [
    "AddNoise", "BackgroundNoise", "Compose", "Gain", "Mixup", "OneOf", "TimeShift", "Transform",
    "colored_noise", "mix_at_snr", "mix_labels",
]

logger = logging.getLogger(__name__)



def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return float(p)


def _check_range(lo: float, hi: float, name: str) -> None:
    if lo > hi:
        raise ValueError(f"min_{name} ({lo}) must be <= max_{name} ({hi})")


def _power(y: np.ndarray) -> float:
    return float(np.mean(np.square(y, dtype=np.float64))) if y.size else 0.0


def mix_at_snr(y: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Return ``y + k * noise`` with ``k`` chosen so that ``10 log10(P(y) / P(k * noise)) = snr_db``.

    Powers are the mean squares of the given arrays. A silent ``y`` or ``noise`` returns ``y``
    unchanged (the SNR is undefined).

    Raises:
        ValueError: when the shapes differ.
    """
    if y.shape != noise.shape:
        raise ValueError(f"signal and noise shapes differ: {y.shape} vs {noise.shape}")
    ps, pn = _power(y), _power(noise)
    if ps == 0.0 or pn == 0.0:
        return y.copy()
    k = np.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
    return (y + k * noise).astype(y.dtype, copy=False)


def colored_noise(n: int, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """Gaussian noise of ``n`` samples; "pink" has a 1/f power spectrum (-3 dB per octave).

    Raises:
        ValueError: unknown color.
    """
    white = rng.standard_normal(n)
    if color == "white":
        return white
    if color != "pink":
        raise ValueError(f"color must be one of {NOISE_COLORS}, got {color!r}")
    spec = np.fft.rfft(white)
    freqs = np.arange(spec.shape[0], dtype=np.float64)
    scale = np.zeros_like(freqs)
    scale[1:] = 1.0 / np.sqrt(freqs[1:])  # amplitude ~ f^-1/2  ->  power ~ 1/f; no DC
    return np.fft.irfft(spec * scale, n=n)


class Transform:
    """Base class: applies ``apply(y, sr, rng)`` with probability ``p``.

    ``__call__`` always draws one uniform number first (whether or not it applies), so the random
    stream does not depend on earlier outcomes. Transforms never modify their input in place.

    Args:
        p: probability of applying the transform.
    """

    def __init__(self, p: float = 1.0) -> None:
        self.p = _check_p(p)

    def __call__(self, y: np.ndarray, sr: int, rng: np.random.Generator | int) -> np.ndarray:
        """Args: y ``(T,)`` waveform; sr its sample rate; rng a Generator or int seed. Returns ``(T,)``."""
        rng = _as_rng(rng)
        if rng.random() < self.p:
            return self.apply(np.asarray(y), sr, rng)
        return y

    def apply(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        """Apply unconditionally (subclasses implement this)."""
        raise NotImplementedError

    def _params(self) -> dict[str, object]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in {**self._params(), "p": self.p}.items())
        return f"{type(self).__name__}({args})"


class Gain(Transform):
    """Multiply by a gain drawn uniformly in ``[min_db, max_db]`` decibels."""

    def __init__(self, min_db: float = -6.0, max_db: float = 6.0, p: float = 1.0) -> None:
        super().__init__(p)
        _check_range(min_db, max_db, "db")
        self.min_db, self.max_db = float(min_db), float(max_db)

    def apply(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        gain_db = rng.uniform(self.min_db, self.max_db)
        return (y * 10.0 ** (gain_db / 20.0)).astype(y.dtype, copy=False)

    def _params(self) -> dict[str, object]:
        return {"min_db": self.min_db, "max_db": self.max_db}


class TimeShift(Transform):
    """Shift by up to ``max_fraction`` of the length either way; roll around or fill with zeros."""

    def __init__(self, max_fraction: float = 0.5, rollover: bool = True, p: float = 1.0) -> None:
        super().__init__(p)
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction, self.rollover = float(max_fraction), bool(rollover)

    def apply(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        n = y.shape[-1]
        limit = int(self.max_fraction * n)
        shift = int(rng.integers(-limit, limit + 1))
        if self.rollover:
            return np.roll(y, shift, axis=-1)
        out = np.zeros_like(y)
        if shift >= 0:
            out[..., shift:] = y[..., : n - shift]
        else:
            out[..., :shift] = y[..., -shift:]
        return out

    def _params(self) -> dict[str, object]:
        return {"max_fraction": self.max_fraction, "rollover": self.rollover}


class AddNoise(Transform):
    """Add white or pink Gaussian noise at an SNR drawn uniformly in ``[min_snr_db, max_snr_db]``.

    The SNR is exact with respect to the clip's own power; a silent clip is returned unchanged.
    """

    def __init__(self, min_snr_db: float = 3.0, max_snr_db: float = 30.0, color: str = "white",
                 p: float = 1.0) -> None:
        super().__init__(p)
        _check_range(min_snr_db, max_snr_db, "snr_db")
        if color not in NOISE_COLORS:
            raise ValueError(f"color must be one of {NOISE_COLORS}, got {color!r}")
        self.min_snr_db, self.max_snr_db, self.color = float(min_snr_db), float(max_snr_db), color

    def apply(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        snr_db = rng.uniform(self.min_snr_db, self.max_snr_db)
        return mix_at_snr(y, colored_noise(y.shape[-1], rng, self.color), snr_db)

    def _params(self) -> dict[str, object]:
        return {"min_snr_db": self.min_snr_db, "max_snr_db": self.max_snr_db, "color": self.color}


class BackgroundNoise(Transform):
    """Mix in a random segment of a random noise file at an SNR in ``[min_snr_db, max_snr_db]``.

    Files are decoded with ``nfaudio.audio.load(path, sr=sr)`` on first use and cached (per
    process, per sample rate) when ``cache`` is true. A noise file shorter than the clip is
    repeated; a silent clip or noise segment leaves the clip unchanged.

    Raises:
        ValueError: empty ``files`` or an invalid range. ``nfaudio.audio.AudioError`` when a file
            cannot be decoded (at first use).
    """

    def __init__(self, files: Sequence[str | Path], min_snr_db: float = 0.0, max_snr_db: float = 20.0,
                 p: float = 1.0, cache: bool = True) -> None:
        super().__init__(p)
        if len(files) == 0:
            raise ValueError("BackgroundNoise needs at least one noise file")
        _check_range(min_snr_db, max_snr_db, "snr_db")
        self.files = [str(f) for f in files]
        self.min_snr_db, self.max_snr_db, self.cache = float(min_snr_db), float(max_snr_db), bool(cache)
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def _noise(self, path: str, sr: int) -> np.ndarray:
        key = (path, sr)
        if key in self._cache:
            return self._cache[key]
        from nfaudio.audio import load  # deferred so the module imports without decoding deps

        noise, _ = load(path, sr=sr)
        if self.cache:
            self._cache[key] = noise
        return noise

    def apply(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        from nfaudio.audio import random_crop

        path = self.files[int(rng.integers(len(self.files)))]
        snr_db = rng.uniform(self.min_snr_db, self.max_snr_db)
        segment = random_crop(self._noise(path, sr), y.shape[-1], rng, pad_mode="repeat")
        if _power(segment) == 0.0:
            logger.debug("background noise segment from %s is silent; clip left unchanged", path)
        return mix_at_snr(y, segment.astype(y.dtype, copy=False), snr_db)

    def __repr__(self) -> str:
        names = [Path(f).name for f in self.files]
        files = repr(names) if len(names) <= 3 else f"<{len(names)} files>"
        return (f"{type(self).__name__}(files={files}, min_snr_db={self.min_snr_db!r}, "
                f"max_snr_db={self.max_snr_db!r}, p={self.p!r})")


def _repr_list(container: Compose | OneOf, tail: str) -> str:
    """Multi-line repr: one child per line, nested containers indented."""
    lines = [f"{type(container).__name__}(["]
    for t in container.transforms:
        child = repr(t).splitlines()
        lines += ["  " + line for line in child[:-1]] + [f"  {child[-1]},"]
    return "\n".join(lines + [f"], {tail})"])


class Compose(Transform):
    """Apply ``transforms`` in order (each with its own ``p``); the whole chain with probability ``p``.

    Example:
        >>> aug = Compose([Gain(p=0.5), AddNoise(10, 30, color="pink", p=0.3)])
        >>> y = aug(np.zeros(32000, np.float32), 32000, rng=np.random.default_rng(0))
    """

    def __init__(self, transforms: Sequence[Transform], p: float = 1.0) -> None:
        super().__init__(p)
        self.transforms = list(transforms)

    def apply(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            y = t(y, sr, rng)
        return y

    def __repr__(self) -> str:
        return _repr_list(self, f"p={self.p!r}")


class OneOf(Transform):
    """With probability ``p`` apply exactly one of ``transforms``, chosen with ``weights``.

    The chosen transform is applied unconditionally (its own ``p`` is ignored here).

    Raises:
        ValueError: empty ``transforms``, or ``weights`` of the wrong length / not positive.
    """

    def __init__(self, transforms: Sequence[Transform], p: float = 1.0,
                 weights: Sequence[float] | None = None) -> None:
        super().__init__(p)
        if len(transforms) == 0:
            raise ValueError("OneOf needs at least one transform")
        self.transforms = list(transforms)
        w = np.ones(len(self.transforms)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.transforms),) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {len(self.transforms)} non-negative numbers with a positive sum")
        self.weights = w / w.sum()

    def apply(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        return self.transforms[int(rng.choice(len(self.transforms), p=self.weights))].apply(y, sr, rng)

    def __repr__(self) -> str:
        weights = [round(float(w), 4) for w in self.weights]
        return _repr_list(self, f"weights={weights}, p={self.p!r}")


def mix_labels(t1, t2, lam, rule: str = "weighted"):
    """Combine two target arrays/tensors: "weighted" ``lam * t1 + (1 - lam) * t2``; "max" elementwise max (OR).

    Args:
        t1, t2: targets of the same shape (numpy arrays or torch tensors).
        lam: mixing weight of ``t1`` (scalar, or broadcastable, e.g. ``(B, 1)``); unused by "max".
        rule: "weighted" or "max".
    Returns:
        Mixed targets of the same type as ``t1``.
    Raises:
        ValueError: unknown rule.
    """
    if rule == "weighted":
        return lam * t1 + (1 - lam) * t2
    if rule == "max":
        return torch.maximum(t1, t2) if isinstance(t1, torch.Tensor) else np.maximum(t1, t2)
    raise ValueError(f"rule must be one of {MIXUP_RULES}, got {rule!r}")


class Mixup(nn.Module):
    """Batch mixup of waveforms: example ``i`` is mixed with ``perm[i]`` with probability ``p``.

    ``lam ~ Beta(alpha, alpha)`` per example; waves become ``lam * x + (1 - lam) * x[perm]``;
    targets and sample weights follow ``rule`` (see ``mix_labels``). Identity in eval mode.

    Args:
        alpha: Beta distribution parameter (> 0).
        p: probability that an example is mixed.
        rule: "weighted" or "max" label rule.

    Raises:
        ValueError: invalid ``alpha``, ``p`` or ``rule``.
    """

    def __init__(self, alpha: float = 0.5, p: float = 0.5, rule: str = "weighted") -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if rule not in MIXUP_RULES:
            raise ValueError(f"rule must be one of {MIXUP_RULES}, got {rule!r}")
        self.alpha, self.p, self.rule = float(alpha), _check_p(p), rule

    def forward(
        self,
        waves: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Args: waves ``(B, T)``, targets ``(B, C)``, weights ``(B,)`` or None, optional CPU generator.

        Returns:
            ``(waves, targets, weights)`` mixed in training mode, the inputs unchanged in eval mode.
        """
        if not self.training or self.p == 0.0 or waves.shape[0] < 2:
            return waves, targets, weights
        b = waves.shape[0]
        perm = torch.randperm(b, generator=generator)
        apply = torch.rand(b, generator=generator) < self.p
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        lam = torch.from_numpy(np.random.default_rng(seed).beta(self.alpha, self.alpha, size=b))
        lam = torch.where(apply, lam, torch.ones_like(lam))  # (B,); 1 = unmixed
        perm, apply = perm.to(waves.device), apply.to(waves.device)
        lam_w = lam.to(device=waves.device, dtype=waves.dtype)[:, None]  # (B, 1)
        waves = lam_w * waves + (1 - lam_w) * waves[perm]
        lam_t = lam.to(device=targets.device, dtype=targets.dtype)[:, None]  # (B, 1)
        mixed = mix_labels(targets, targets[perm], lam_t, self.rule)
        targets = torch.where(apply.to(targets.device)[:, None], mixed, targets)
        if weights is not None:
            lam_s = lam.to(device=weights.device, dtype=weights.dtype)
            mixed_w = mix_labels(weights, weights[perm], lam_s, self.rule)
            weights = torch.where(apply.to(weights.device), mixed_w, weights)
        return waves, targets, weights

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, p={self.p}, rule={self.rule!r}"
