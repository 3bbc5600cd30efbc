"""A target domain for the synthetic soundscapes: recorded the way passive soundscape recorders hear birds, not
the way focal recordings do.

BirdCLEF trains on xeno-canto clips (a recordist points a microphone at one close bird) and scores soundscapes of
autonomous recorders (birds at any distance, in a forest, several at once, under insects and rain). A
:class:`TargetDomain` makes the synthetic soundscapes differ from the synthetic training clips in those ways, so
that domain adaptation (pseudo-labels on unlabelled soundscapes, noisy-student rounds) has something to fix:

- distance: each call comes from ``distance_m`` metres; it is ``20 log10(d / ref_distance_m)`` dB quieter
  (spherical spreading; the clips are recorded at ``ref_distance_m``) and low-passed by air absorption,
  ``absorption_db * (f / 1 kHz) ** 1.7 * d / 100`` dB at frequency ``f`` (of the order of ISO 9613-1 at 20 C, 50 %
  humidity, with foliage scattering folded in), so a distant high whistle loses most of its energy;
- reverberation: the call is convolved with an exponentially decaying noise impulse response of ``rt60_s``
  (the time to decay by 60 dB), mixed at a reverberant fraction ``wet`` of the call's energy;
- overlap: up to ``max_species`` species per window instead of the clips' one or two;
- lower SNR: ``snr_db`` against the background (the clips are at 0-20 dB);
- other background: brighter broadband noise (rain, leaves: ``noise_alpha``), and with probability
  ``insect_prob`` a stationary insect chorus, band-limited noise in ``insect_band_hz`` pulsed at 20-60 Hz,
  ``insect_db`` relative to the broadband noise.

All randomness comes from the generator passed in (:func:`propagate`, :func:`target_background`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfaudio.synth.calls import NoiseProfile, background

__all__ = ["TargetDomain", "propagate", "target_background"]


@dataclass(frozen=True)
class TargetDomain:
    """How target-domain soundscapes are recorded (see the module docstring); ranges are drawn uniformly.

    Raises:
        ValueError: a range whose low end exceeds its high end, or a value outside its domain.
    """

    distance_m: tuple[float, float] = (10.0, 120.0)
    ref_distance_m: float = 10.0
    absorption_db: float = 0.5
    rt60_s: tuple[float, float] = (0.2, 1.0)
    wet: tuple[float, float] = (0.2, 0.6)
    max_species: int = 5
    snr_db: tuple[float, float] = (-6.0, 6.0)
    noise_alpha: tuple[float, float] = (0.3, 1.0)
    insect_prob: float = 0.7
    insect_band_hz: tuple[float, float] = (4000.0, 7000.0)
    insect_db: tuple[float, float] = (-6.0, 3.0)

    def __post_init__(self) -> None:
        ranges = {name: getattr(self, name) for name in ("distance_m", "rt60_s", "wet", "snr_db", "noise_alpha",
                                                         "insect_band_hz", "insect_db")}
        bad = [name for name, (lo, hi) in ranges.items() if lo > hi]
        checks = {"distance_m": self.distance_m[0] > 0, "ref_distance_m": self.ref_distance_m > 0,
                  "absorption_db": self.absorption_db >= 0, "rt60_s": self.rt60_s[0] >= 0,
                  "wet": self.wet[0] >= 0 and self.wet[1] <= 1, "max_species": 0 <= self.max_species <= 5,
                  "insect_prob": 0 <= self.insect_prob <= 1, "insect_band_hz": self.insect_band_hz[0] > 0}
        bad += [name for name, ok in checks.items() if not ok and name not in bad]
        if bad:
            raise ValueError(f"invalid TargetDomain field(s) {bad}: {self}")


def _absorb(call: np.ndarray, sr: int, distance: float, absorption_db: float) -> np.ndarray:
    n = len(call)
    m = 1 << max(int(np.ceil(np.log2(max(n, 2)))), 1)
    spec = np.fft.rfft(call, m)
    f_khz = np.fft.rfftfreq(m, 1.0 / sr) / 1000.0
    spec *= 10 ** (-absorption_db * f_khz**1.7 * distance / 100.0 / 20.0)
    return np.fft.irfft(spec, m)[:n]


def _reverberate(call: np.ndarray, sr: int, rt60: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """``sqrt(1 - wet) * call + sqrt(wet) * tail``, both of the call's energy; ``len(call) + rt60 * sr`` samples."""
    n_ir = int(rt60 * sr)
    out = np.zeros(len(call) + n_ir)
    out[: len(call)] = call
    if n_ir < 2 or wet <= 0:
        return out
    t = np.arange(n_ir) / sr
    ir = rng.standard_normal(n_ir) * np.exp(-3.0 * np.log(10.0) * t / rt60)  # -60 dB at rt60
    m = 1 << int(np.ceil(np.log2(len(out))))
    tail = np.fft.irfft(np.fft.rfft(call, m) * np.fft.rfft(ir, m), m)[: len(out)]
    energy = float(np.sum(call**2))
    tail *= np.sqrt(energy / max(float(np.sum(tail**2)), 1e-30))
    return np.sqrt(1.0 - wet) * out + np.sqrt(wet) * tail


def propagate(call: np.ndarray, sr: int, rng: np.random.Generator, domain: TargetDomain) -> np.ndarray:
    """A close-recorded ``call`` as a recorder ``distance_m`` away in a reverberant habitat hears it.

    Returns:
        float32 waveform ``rt60 * sr`` samples longer than ``call`` (the reverberant tail).
    """
    distance = float(rng.uniform(*domain.distance_m))
    rt60, wet = float(rng.uniform(*domain.rt60_s)), float(rng.uniform(*domain.wet))
    y = _absorb(call.astype(np.float64), sr, distance, domain.absorption_db)
    y = _reverberate(y, sr, rt60, wet, rng) * (domain.ref_distance_m / max(distance, domain.ref_distance_m))
    return y.astype(np.float32)


def _insects(n: int, sr: int, rng: np.random.Generator, band: tuple[float, float]) -> np.ndarray:
    """Unit-RMS band-limited noise pulsed at a stridulation rate of 20-60 Hz (a cicada / cricket chorus)."""
    lo = float(rng.uniform(band[0], (band[0] + band[1]) / 2))
    hi = min(lo + float(rng.uniform(500.0, band[1] - band[0] + 500.0)), 0.45 * sr)
    m = 1 << max(int(np.ceil(np.log2(max(n, 2)))), 1)
    spec = rng.standard_normal(m // 2 + 1) + 1j * rng.standard_normal(m // 2 + 1)
    f = np.fft.rfftfreq(m, 1.0 / sr)
    spec[(f < lo) | (f > hi)] = 0.0
    y = np.fft.irfft(spec, m)[:n]
    rate = float(rng.uniform(20.0, 60.0))
    y *= 0.6 + 0.4 * np.sin(2 * np.pi * rate * np.arange(n) / sr + rng.uniform(0, 2 * np.pi))
    return y / max(float(np.sqrt(np.mean(y**2))), 1e-12)


def target_background(n: int, sr: int, rng: np.random.Generator, domain: TargetDomain) -> np.ndarray:
    """Unit-RMS float32 target-domain background: bright broadband noise with gusts, often an insect chorus."""
    profile = NoiseProfile(alpha=float(rng.uniform(*domain.noise_alpha)), wind=float(rng.uniform(0.2, 0.8)))
    y = background(n, sr, rng, profile).astype(np.float64)
    if rng.uniform() < domain.insect_prob and domain.insect_band_hz[0] < 0.45 * sr:
        y += _insects(n, sr, rng, domain.insect_band_hz) * 10 ** (rng.uniform(*domain.insect_db) / 20)
    return (y / max(float(np.sqrt(np.mean(y**2))), 1e-12)).astype(np.float32)
