"""Log-mel frontend: waveform -> log-mel (dB) image, with interchangeable STFT strategies.

The frontend lives inside the model (as in PANNs, Kong et al. 2020), so training, evaluation,
prediction and the exported ONNX graph all see audio the same way and run on the model's device.

``LogMel`` reproduces ``librosa.feature.melspectrogram`` (Slaney mel scale, Slaney area
normalisation, Hann window) followed by ``librosa.power_to_db`` to within 1e-3 dB in float32
(see the class docstring for the precision note).
STFT strategies (``stft=``): "fft" (training and torch inference), "conv" (a strided conv1d) and "matmul"
(two small DFT matrix products, :mod:`nfaudio.frontend.matmul`: the graph ONNX export writes, several times
faster in onnxruntime/OpenVINO than the ONNX ``STFT`` op). All give the same values within float rounding.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nfaudio.choices import NORMALIZE
from nfaudio.frontend.matmul import MatmulSTFT

__all__ = ["STFT_STRATEGIES", "LogMel"]

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}
STFT_STRATEGIES = ("fft", "conv", "matmul")


def _mel_bands(mel_fb: torch.Tensor, group: int = 16) -> list[tuple[int, int, int, int]]:
    """Split the filterbank into groups of ``group`` mels and the FFT-bin band each group covers.

    Returns:
        ``[(mel_start, mel_stop, bin_start, bin_stop), ...]``; outside its band a group's weights are 0.
    """
    nonzero = mel_fb != 0
    bands = []
    for m0 in range(0, mel_fb.shape[0], group):
        m1 = min(m0 + group, mel_fb.shape[0])
        cols = nonzero[m0:m1].any(dim=0).nonzero().flatten()
        lo, hi = (int(cols.min()), int(cols.max()) + 1) if cols.numel() else (0, 1)  # all-zero filters
        bands.append((m0, m1, lo, hi))
    return bands


class LogMel(nn.Module):
    """Log-mel spectrogram in dB, matching librosa (Slaney mel filterbank).

    Computes ``power_to_db(melspectrogram(y), ref, amin, top_db)`` then an optional normalisation.
    ``top_db`` clamps per example: each clip's floor is its own maximum minus ``top_db``, exactly
    as ``librosa.power_to_db`` does on one clip.

    Precision: the STFT and the mel projection run in the input's dtype (float32 normally).
    Against a float64 librosa reference the float32 result agrees within 1e-3 dB (the tests check
    every bin; the worst seen was ~6e-4 dB, on a pure tone with ``top_db=None`` and 137 dB of
    range). float32 STFT rounding is ~1e-7 of the clip's peak, so with ``top_db=None`` bins far
    below the peak (more than ~100 dB) are not guaranteed to stay within 1e-3 dB; pass float64
    input (``.double()`` the module) when such bins matter.

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
        stft: "fft" frames the signal and uses ``torch.fft.rfft`` (fast); under ``torch.onnx.export``
            (TorchScript exporter, opset >= 17) it switches to ``torch.stft``, exported as the ONNX
            ``STFT`` op. "conv" uses a strided ``conv1d`` with a windowed DFT basis buffer: exports to
            any opset/runtime that has ``Conv`` and keeps working if ``stft(return_complex=False)``
            is removed from torch, but is several times slower on CPU (see benchmarks/frontend.py).
            "matmul" computes the DFT as two small matrix products (:class:`~nfaudio.frontend.matmul.MatmulSTFT`);
            it is what :func:`nfaudio.export.export_onnx` writes into the ONNX graph.

    Shape:
        input ``(B, T)`` float waveform; output ``(B, 1, n_mels, n_frames(T))``.

    Raises:
        ValueError: on an invalid argument (e.g. ``fmax > sample_rate / 2``, ``n_mels < 1``).

    Example:
        >>> fe = LogMel(sample_rate=32000)
        >>> fe(torch.zeros(2, 160000)).shape
        torch.Size([2, 1, 128, 313])
    """

    CPU_CHUNK_SAMPLES: int = 640_000  # samples per chunk on CPU (four 5 s clips at 32 kHz)

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
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if normalize == "fixed" and std <= 0:
            raise ValueError(f"std must be > 0 for normalize='fixed', got {std}")
        if stft not in STFT_STRATEGIES:
            raise ValueError(f"stft must be one of {STFT_STRATEGIES}, got {stft!r}")

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
        # derived, not saved: each filter's weights repeated for the (re^2, im^2) columns of the fast path
        self.register_buffer("mel_fb2", self.mel_fb.repeat_interleave(2, dim=1), persistent=False)
        self._mel_bands = _mel_bands(self.mel_fb)
        self.matmul = MatmulSTFT(self.n_fft, self.hop_length, self.window, self.mel_fb) if stft == "matmul" else None
        if stft == "conv":
            n_bins = self.n_fft // 2 + 1
            k = torch.arange(n_bins, dtype=torch.float64)[:, None]
            n = torch.arange(self.n_fft, dtype=torch.float64)[None, :]
            phase = 2.0 * math.pi * ((k * n) % self.n_fft) / self.n_fft
            w = torch.as_tensor(window, dtype=torch.float64)
            basis = torch.cat([torch.cos(phase) * w, -torch.sin(phase) * w])  # (2 * n_bins, n_fft)
            self.register_buffer("dft_basis", basis[:, None, :].float())  # (2 * n_bins, 1, n_fft)
        else:
            self.register_buffer("dft_basis", None)

    def settings(self) -> dict[str, Any]:
        """The constructor arguments of this frontend (``LogMel(**fe.settings())`` rebuilds it)."""
        names = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax", "power", "top_db",
                 "amin", "ref", "center", "pad_mode", "normalize", "mean", "std", "eps", "stft")
        return {name: getattr(self, name) for name in names}

    def with_stft(self, stft: str) -> LogMel:
        """The same frontend computing its STFT with another strategy (a new module; ``self`` is unchanged)."""
        other = LogMel(**{**self.settings(), "stft": stft})
        return other.to(device=self.window.device)

    def n_frames(self, num_samples: int) -> int:
        """Number of output frames for an input of ``num_samples`` samples."""
        if self.center:
            return 1 + num_samples // self.hop_length
        if num_samples < self.n_fft:
            raise ValueError(f"center=False needs at least n_fft={self.n_fft} samples, got {num_samples}")
        return 1 + (num_samples - self.n_fft) // self.hop_length

    def _magnitude(self, sq: torch.Tensor) -> torch.Tensor:
        """|X|^2 -> |X|^power."""
        if self.power == 2.0:
            return sq
        if self.power == 1.0:
            return sq.sqrt()
        return sq.pow(self.power / 2.0)

    def _mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> mel spectrogram (B, frames, n_mels) of |STFT|^power."""
        x = wave
        if self.center:
            pad = self.n_fft // 2
            x = F.pad(x[:, None, :], (pad, pad), mode=_PAD_MODES[self.pad_mode])[:, 0]  # (B, T + n_fft)
        if self.matmul is not None:
            return self.matmul.mel(x, self._magnitude)  # (B, frames, n_mels)
        window = self.window.to(x.dtype)
        fb, k = self.mel_fb, 1  # spec @ fb.T; k = spec columns per FFT bin
        if self.dft_basis is not None:
            z = F.conv1d(x[:, None, :], self.dft_basis.to(x.dtype), stride=self.hop_length)  # (B, 2*bins, frames)
            re, im = z.transpose(1, 2).chunk(2, dim=-1)  # 2 x (B, frames, bins)
            spec = self._magnitude(re * re + im * im)
        elif torch.onnx.is_in_onnx_export():
            # The TorchScript exporter maps only the real-output form of stft to the ONNX STFT op.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="stft with return_complex=False is deprecated")
                z = torch.stft(x, self.n_fft, self.hop_length, window=window, center=False,
                               return_complex=False).transpose(1, 2)  # (B, frames, bins, 2)
            spec = self._magnitude(z[..., 0] * z[..., 0] + z[..., 1] * z[..., 1])
        else:
            frames = x.unfold(-1, self.n_fft, self.hop_length) * window  # (B, frames, n_fft)
            z = torch.view_as_real(torch.fft.rfft(frames, dim=-1))  # (B, frames, bins, 2), contiguous
            z = z.square() if z.requires_grad else z.square_()  # in place: no new large tensor
            if self.power == 2.0:
                # Project the interleaved (re^2, im^2) columns with a column-doubled filterbank: the
                # matmul does the re^2 + im^2 sum, avoiding slow strided elementwise ops.
                spec, fb, k = z.flatten(-2), self.mel_fb2, 2  # (B, frames, 2 * bins)
            else:
                spec = self._magnitude(z[..., 0] + z[..., 1])
        fb = fb.to(spec.dtype)
        # Each group of mel filters is zero outside a band of FFT bins: project band by band (same sums,
        # ~5x fewer multiply-adds than the dense (bins x n_mels) product for the default settings).
        return torch.cat([torch.matmul(spec[..., k * lo:k * hi], fb[m0:m1, k * lo:k * hi].t())  # (B, frames, m)
                          for m0, m1, lo, hi in self._mel_bands], dim=-1)  # (B, frames, n_mels)

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> normalised log-mel (B, n_mels, frames)."""
        mel = self._mel(wave)  # (B, frames, n_mels)
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
        return db.transpose(1, 2)  # (B, n_mels, frames)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave ``(B, T)``. Returns: log-mel ``(B, 1, n_mels, frames)`` in dB (then normalised).

        On CPU the batch is processed a few examples at a time (``CPU_CHUNK_SAMPLES`` samples per
        chunk) so the framed signal and spectrum stay in cache; this is ~2x faster than one large
        batch and gives identical values. Each example is independent, so chunking is exact.
        """
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects a (batch, samples) waveform, got shape {tuple(wave.shape)}")
        if not self.center and wave.shape[-1] < self.n_fft:
            raise ValueError(f"center=False needs at least n_fft={self.n_fft} samples, got {wave.shape[-1]}")
        if self.center and self.pad_mode == "reflect" and wave.shape[-1] <= self.n_fft // 2:
            raise ValueError(f"pad_mode='reflect' needs more than n_fft // 2 = {self.n_fft // 2} samples")
        per_chunk = max(1, self.CPU_CHUNK_SAMPLES // max(1, wave.shape[-1]))
        if wave.device.type != "cpu" or wave.shape[0] <= per_chunk or torch.onnx.is_in_onnx_export():
            out = self._log_mel(wave)
        else:
            out = torch.cat([self._log_mel(part) for part in wave.split(per_chunk)])
        return out.unsqueeze(1).contiguous()  # (B, 1, n_mels, frames)

    def extra_repr(self) -> str:
        s = (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
             f"win_length={self.win_length}, n_mels={self.n_mels}, fmin={self.fmin}, fmax={self.fmax}, "
             f"power={self.power}, top_db={self.top_db}, center={self.center}, pad_mode={self.pad_mode!r}, "
             f"normalize={self.normalize!r}")
        if self.normalize == "fixed":
            s += f", mean={self.mean}, std={self.std}"
        return s + f", stft={self.stft!r}"
