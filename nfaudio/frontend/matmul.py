"""The "matmul" STFT strategy of :class:`~nfaudio.frontend.LogMel`: the power spectrum as two small DFT matrix
products (one Cooley-Tukey step, ``n_fft = N1 * N2``) instead of an FFT.

Exported to ONNX it is a handful of ``MatMul`` nodes, which onnxruntime and OpenVINO run several times faster on
a CPU than the ONNX ``STFT`` op; :func:`nfaudio.export.export_onnx` writes this strategy into the graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MatmulSTFT"]


class MatmulSTFT(nn.Module):
    """Framing, windowed DFT and mel projection of an already padded signal, by matrix products.

    Its buffers are derived from the frontend's window and filterbank and are not saved with a checkpoint
    (``persistent=False``), so a frontend's state dict is the same whatever its STFT strategy.

    Args:
        n_fft: FFT size.
        hop_length: hop between frames in samples.
        window: the frontend's analysis window ``(n_fft,)``.
        mel_fb: the frontend's filterbank ``(n_mels, n_fft // 2 + 1)``.

    Shape:
        :meth:`mel`: padded signal ``(B, L)`` -> mel spectrogram ``(B, frames, n_mels)``,
        ``frames = 1 + (L - n_fft) // hop_length``.
    """

    def __init__(self, n_fft: int, hop_length: int, window: torch.Tensor, mel_fb: torch.Tensor) -> None:
        super().__init__()
        n = int(n_fft)
        n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        n2, half = n // n1, n // n1 // 2 + 1
        self.n, self.n1, self.n2, self.hop = n, n1, n2, int(hop_length)
        self.register_buffer("window", window.detach().float().reshape(n1, n2).clone(), persistent=False)
        k1 = torch.arange(n1, dtype=torch.float64)
        a = 2 * math.pi * torch.outer(k1, k1) / n1
        dft1 = torch.cat([torch.cos(a), -torch.sin(a)]).t().float().contiguous()  # (n1, 2 n1)
        self.register_buffer("dft1", dft1, persistent=False)
        t = 2 * math.pi * torch.outer(torch.arange(n2, dtype=torch.float64), k1) / n  # twiddles (n2, n1)
        self.register_buffer("tw_cos", torch.cos(t).float(), persistent=False)
        self.register_buffer("tw_sin", torch.sin(t).float(), persistent=False)
        b = 2 * math.pi * torch.outer(torch.arange(n2, dtype=torch.float64), torch.arange(half, dtype=torch.float64))
        c2, s2 = torch.cos(b / n2), torch.sin(b / n2)
        dft2 = torch.cat([torch.cat([c2, -s2], 1), torch.cat([s2, c2], 1)]).float()  # (2 n2, 2 half)
        self.register_buffer("dft2", dft2, persistent=False)
        # Stage 2 leaves bin k1 + n1 * k2 at position k1 * half + k2: fold that order into the mel matrix.
        bins = (torch.arange(n1)[:, None] + n1 * torch.arange(half)[None, :]).reshape(-1)
        fb = mel_fb.detach().double().t()  # (n_fft // 2 + 1, n_mels)
        mel = torch.zeros(n1 * half, fb.shape[1], dtype=torch.float64)
        mel[bins <= n // 2] = fb[bins[bins <= n // 2]]
        self.register_buffer("mel_matrix", mel.float(), persistent=False)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """Cut a padded signal ``(B, L)`` into frames ``(B, F, n_fft)``."""
        batch, frames = x.shape[0], 1 + (x.shape[-1] - self.n) // self.hop
        if self.n % self.hop == 0:  # hop blocks, shifted and concatenated: no gather
            r = self.n // self.hop
            blocks = x[:, :(frames - 1 + r) * self.hop].reshape(batch, frames - 1 + r, self.hop)
            return torch.cat([blocks[:, j:j + frames] for j in range(r)], dim=-1)  # (B, F, n)
        index = torch.arange(frames, device=x.device)[:, None] * self.hop + torch.arange(self.n, device=x.device)
        return x[:, index.int()]  # (B, F, n)

    def mel(self, x: torch.Tensor, magnitude: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Padded signal ``(B, L)`` -> mel spectrogram ``(B, frames, n_mels)`` of ``magnitude(|X|^2)``."""
        frames = self.frames(x)
        batch, count = frames.shape[0], frames.shape[1]
        x = (frames.reshape(batch, count, self.n1, self.n2) * self.window).transpose(-1, -2)  # (B, F, n2, n1)
        a = torch.matmul(x.reshape(-1, self.n1), self.dft1).reshape(batch, count, self.n2, 2 * self.n1)
        re, im = a[..., :self.n1], a[..., self.n1:]  # stage 1 over n1: (B, F, n2, k1)
        b = torch.cat([re * self.tw_cos + im * self.tw_sin, im * self.tw_cos - re * self.tw_sin], dim=-2)
        b = b.transpose(-1, -2).reshape(-1, 2 * self.n2)  # (B F n1, [re | im] over n2)
        z = torch.matmul(b, self.dft2).reshape(batch, count, self.n1, -1)  # stage 2: (B, F, k1, [re | im] k2)
        h = z.shape[-1] // 2
        power = (z[..., :h] * z[..., :h] + z[..., h:] * z[..., h:]).reshape(batch, count, -1)
        return torch.matmul(magnitude(power), self.mel_matrix)  # (B, F, n_mels)

    def extra_repr(self) -> str:
        return f"n_fft={self.n} = {self.n1} x {self.n2}, hop_length={self.hop}"
