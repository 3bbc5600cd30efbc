"""Spectrogram frontend: waveform -> log-mel (dB) image, plus SpecAugment.

The frontend lives inside the model (as in PANNs, Kong et al. 2020), so training, evaluation,
prediction and the exported ONNX graph all see audio the same way and run on the model's device.

``LogMel`` reproduces ``librosa.feature.melspectrogram`` (Slaney mel scale, Slaney area
normalisation, Hann window) followed by ``librosa.power_to_db`` to within 1e-3 dB on every bin
that lies above the ``top_db`` floor (see the class docstring for the precision note).
``SpecAugment`` implements the time and frequency masking of Park et al. 2019, "SpecAugment:
A Simple Data Augmentation Method for Automatic Speech Recognition".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LogMel", "SpecAugment"]

_NORMALIZE = ("none", "per_clip", "fixed")
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}
_STFT = ("fft", "conv")


class LogMel(nn.Module):
    """Log-mel spectrogram in dB, matching librosa (Slaney mel filterbank).

    Computes ``power_to_db(melspectrogram(y), ref, amin, top_db)`` then an optional normalisation.
    ``top_db`` clamps per example: each clip's floor is its own maximum minus ``top_db``, exactly
    as ``librosa.power_to_db`` does on one clip.

    Precision: the STFT and the mel projection run in the input's dtype (float32 normally).
    Against a float64 librosa reference the result agrees within 1e-3 dB on every bin at or above
    the ``top_db`` floor. With ``top_db=None``, bins more than ~80 dB below the clip maximum are
    dominated by float32 rounding of the STFT and can differ by more; pass float64 input when
    those bins must be exact.

    Args:
        sample_rate: sample rate of the input waveform in Hz.
        n_fft: FFT size.
        hop_length: hop between frames in samples.
        win_length: Hann window length (``<= n_fft``, centred in the frame); ``None`` means ``n_fft``.
        n_mels: number of mel bands.
        fmin: lowest mel frequency in Hz.
        fmax: highest mel frequency in Hz (``<= sample_rate / 2``); ``None`` means ``sample_rate / 2``.
        power: exponent of the magnitude (2 = power, 1 = magnitude).
        top_db: dynamic range kept below each clip's maximum, or ``None`` for no clamp.
        amin: floor applied before the log.
        ref: reference power (0 dB).
        center: pad ``n_fft // 2`` on both sides so frame ``t`` is centred at ``t * hop_length``.
        pad_mode: padding when ``center``: "constant" (librosa's default), "reflect" or "edge".
        normalize: "none"; "per_clip" (zero mean, unit std over (mel, time) per example);
            "fixed" (``(x - mean) / std`` with the given constants).
        mean: mean for ``normalize="fixed"``.
        std: std for ``normalize="fixed"``.
        eps: added to the std for ``normalize="per_clip"``.
        stft: "fft" uses ``torch.stft`` (fast; exported to the ONNX ``STFT`` op, opset >= 17);
            "conv" uses a strided ``conv1d`` with a windowed DFT basis buffer (exports to any opset
            and runtime that has ``Conv``, but is several times slower on CPU).

    Shape:
        input ``(B, T)`` float waveform; output ``(B, 1, n_mels, n_frames(T))``.

    Raises:
        ValueError: on an invalid argument (e.g. ``fmax > sample_rate / 2``, ``n_mels < 1``).

    Example:
        >>> fe = LogMel(sample_rate=32000)
        >>> fe(torch.zeros(2, 160000)).shape
        torch.Size([2, 1, 128, 313])
    """

    def __init__(
        self,
        sample_rate: int = 32000,
        n_fft: int = 2048,
        hop_length: int = 512,
        win_length: int | None = None,
        n_mels: int = 128,
        fmin: float = 20.0,
        fmax: float | None = 16000.0,
        power: float = 2.0,
        top_db: float | None = 80.0,
        amin: float = 1e-10,
        ref: float = 1.0,
        center: bool = True,
        pad_mode: str = "constant",
        normalize: str = "none",
        mean: float = 0.0,
        std: float = 1.0,
        eps: float = 1e-6,
        stft: str = "fft",
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        fmax = sample_rate / 2.0 if fmax is None else float(fmax)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if n_fft < 2 or hop_length < 1:
            raise ValueError(f"need n_fft >= 2 and hop_length >= 1, got n_fft={n_fft}, hop_length={hop_length}")
        if not 1 <= win_length <= n_fft:
            raise ValueError(f"win_length must be in [1, n_fft={n_fft}], got {win_length}")
        if n_mels < 1:
            raise ValueError(f"n_mels must be >= 1, got {n_mels}")
        if not 0.0 <= fmin < fmax:
            raise ValueError(f"need 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
        if fmax > sample_rate / 2.0:
            raise ValueError(f"fmax={fmax} exceeds the Nyquist frequency {sample_rate / 2.0} Hz")
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        if top_db is not None and top_db < 0:
            raise ValueError(f"top_db must be >= 0 or None, got {top_db}")
        if amin <= 0 or ref <= 0:
            raise ValueError(f"amin and ref must be > 0, got amin={amin}, ref={ref}")
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {sorted(_PAD_MODES)}, got {pad_mode!r}")
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
        if normalize == "fixed" and std <= 0:
            raise ValueError(f"std must be > 0 for normalize='fixed', got {std}")
        if stft not in _STFT:
            raise ValueError(f"stft must be one of {_STFT}, got {stft!r}")

        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.win_length = int(win_length)
        self.n_mels = int(n_mels)
        self.fmin = float(fmin)
        self.fmax = fmax
        self.power = float(power)
        self.top_db = None if top_db is None else float(top_db)
        self.amin = float(amin)
        self.ref = float(ref)
        self.center = bool(center)
        self.pad_mode = pad_mode
        self.normalize = normalize
        self.mean = float(mean)
        self.std = float(std)
        self.eps = float(eps)
        self.stft = stft

        import librosa  # deferred: importing librosa is slow and only the constructor needs it

        window = librosa.filters.get_window("hann", self.win_length, fftbins=True)
        window = librosa.util.pad_center(window, size=self.n_fft)
        mel_fb = librosa.filters.mel(
            sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax,
            htk=False, norm="slaney", dtype=float,
        )
        self.register_buffer("window", torch.as_tensor(window, dtype=torch.float32))
        self.register_buffer("mel_fb", torch.as_tensor(mel_fb, dtype=torch.float32))  # (n_mels, n_fft//2+1)
        if stft == "conv":
            n_bins = self.n_fft // 2 + 1
            k = torch.arange(n_bins, dtype=torch.float64)[:, None]
            n = torch.arange(self.n_fft, dtype=torch.float64)[None, :]
            phase = 2.0 * math.pi * ((k * n) % self.n_fft) / self.n_fft
            w = torch.as_tensor(window, dtype=torch.float64)
            basis = torch.cat([torch.cos(phase) * w, -torch.sin(phase) * w])  # (2 * n_bins, n_fft)
            self.register_buffer("dft_basis", basis[:, None, :].float())  # (2 * n_bins, 1, n_fft)
        else:
            self.dft_basis = None

    def n_frames(self, num_samples: int) -> int:
        """Number of output frames for an input of ``num_samples`` samples."""
        if self.center:
            return 1 + num_samples // self.hop_length
        if num_samples < self.n_fft:
            raise ValueError(f"center=False needs at least n_fft={self.n_fft} samples, got {num_samples}")
        return 1 + (num_samples - self.n_fft) // self.hop_length

    def _spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> |STFT|^power of shape (B, n_fft // 2 + 1, frames)."""
        x = wave
        if self.center:
            pad = self.n_fft // 2
            x = F.pad(x[:, None, :], (pad, pad), mode=_PAD_MODES[self.pad_mode])[:, 0]  # (B, T + n_fft)
        if self.dft_basis is not None:
            z = F.conv1d(x[:, None, :], self.dft_basis.to(x.dtype), stride=self.hop_length)  # (B, 2*bins, frames)
            re, im = z.chunk(2, dim=1)
            sq = re * re + im * im
        else:
            window = self.window.to(x.dtype)
            if torch.onnx.is_in_onnx_export():
                # The TorchScript exporter maps only the real-output form to the ONNX STFT op.
                z = torch.stft(x, self.n_fft, self.hop_length, window=window, center=False,
                               return_complex=False)  # (B, bins, frames, 2)
            else:
                z = torch.view_as_real(torch.stft(x, self.n_fft, self.hop_length, window=window,
                                                  center=False, return_complex=True))
            sq = z[..., 0] * z[..., 0] + z[..., 1] * z[..., 1]  # (B, bins, frames)
        if self.power == 2.0:
            return sq
        if self.power == 1.0:
            return sq.sqrt()
        return sq.pow(self.power / 2.0)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave ``(B, T)``. Returns: log-mel ``(B, 1, n_mels, frames)`` in dB (then normalised)."""
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects a (batch, samples) waveform, got shape {tuple(wave.shape)}")
        spec = self._spectrogram(wave)  # (B, bins, frames)
        mel = torch.matmul(self.mel_fb.to(spec.dtype), spec)  # (B, n_mels, frames)
        db = 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
        db = db - 10.0 * math.log10(max(self.amin, self.ref))
        if self.top_db is not None:
            peak = db.amax(dim=(-2, -1), keepdim=True)  # (B, 1, 1): per-example maximum
            db = torch.maximum(db, peak - self.top_db)
        if self.normalize == "per_clip":
            mu = db.mean(dim=(-2, -1), keepdim=True)
            sigma = db.std(dim=(-2, -1), keepdim=True)
            db = (db - mu) / (sigma + self.eps)
        elif self.normalize == "fixed":
            db = (db - self.mean) / self.std
        return db.unsqueeze(1)  # (B, 1, n_mels, frames)

    def extra_repr(self) -> str:
        s = (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
             f"win_length={self.win_length}, n_mels={self.n_mels}, fmin={self.fmin}, fmax={self.fmax}, "
             f"power={self.power}, top_db={self.top_db}, center={self.center}, pad_mode={self.pad_mode!r}, "
             f"normalize={self.normalize!r}")
        if self.normalize == "fixed":
            s += f", mean={self.mean}, std={self.std}"
        return s + f", stft={self.stft!r}"


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
