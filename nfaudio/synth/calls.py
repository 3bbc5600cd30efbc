"""Signal generation for the synthetic dataset: species specs, calls, background noise, clips and soundscapes.

A species is a row of generator parameters (frequency trajectory, amplitude/frequency modulation, harmonics),
not a subclass. Calls get random pitch, duration, rate and level. Clips mix calls of a primary species (sometimes
a quieter secondary one) into coloured noise with optional mains hum and wind gusts. Soundscapes hold 0-3
species per 5-second window, each call inside one window, so per-window labels (:func:`events_to_labels`) are
unambiguous. All randomness comes from the ``np.random.Generator`` passed in.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["SPECIES", "Event", "NoiseProfile", "SpeciesSpec", "background", "events_to_labels", "make_call",
           "make_clip", "make_soundscape"]

_F_MAX = 12000.0  # top call frequency (Hz) at sample rates >= _SCALE_SR
_SCALE_SR = 25600.0  # below it, call frequencies scale by sr / _SCALE_SR (12 kHz -> 7.5 kHz at 16 kHz)


@dataclass(frozen=True)
class SpeciesSpec:
    """Generator parameters of one species; frequencies in Hz for sample rates >= 25.6 kHz.

    A call glides geometrically from ``f_start`` to ``f_end`` over ``duration`` s, optionally frequency-modulated
    (``fm_rate`` Hz, ``fm_depth`` Hz) and pulsed (``am_rate`` pulses/s, each ``am_duty`` of a period); harmonic
    ``k`` has relative amplitude ``harmonics[k - 1]``. ``home`` is the (latitude, longitude) range centre.
    """

    scientific_name: str
    common_name: str
    f_start: float
    f_end: float
    duration: float
    harmonics: tuple[float, ...] = (1.0,)
    am_rate: float = 0.0
    am_duty: float = 0.5
    fm_rate: float = 0.0
    fm_depth: float = 0.0
    call_type: str = "call"
    home: tuple[float, float] = (0.0, 0.0)


SPECIES: dict[str, SpeciesSpec] = {  # the first n_species rows are used; the first six are the core set
    "upswee1": SpeciesSpec("Synthia ascendens", "Rising Sweeper", 1800, 5200, 0.45, home=(48.1, 11.6)),
    "dnswee1": SpeciesSpec("Synthia descendens", "Falling Sweeper", 9000, 3800, 0.35, home=(45.8, 6.1)),
    "sltril1": SpeciesSpec("Trillula lenta", "Slow Triller", 2800, 3100, 1.4, am_rate=4.0, am_duty=0.6,
                           call_type="song", home=(-3.4, 36.7)),
    "fstril1": SpeciesSpec("Trillula celer", "Fast Triller", 6200, 6000, 1.0, am_rate=12.0, am_duty=0.4,
                           call_type="song", home=(-1.3, 36.8)),
    "harmon1": SpeciesSpec("Harmonica stratosa", "Stacked Hummer", 1100, 1150, 0.7,
                           harmonics=(1.0, 0.7, 0.5, 0.35), fm_rate=5.0, fm_depth=25.0, home=(10.5, 76.9)),
    "clictr1": SpeciesSpec("Crepitus serialis", "Clicking Tick", 9500, 9500, 0.8, am_rate=16.0, am_duty=0.1,
                           home=(-33.9, 151.2)),
    "warble1": SpeciesSpec("Vibrata modulans", "Warbling Wobbler", 7400, 7400, 0.9, fm_rate=7.0,
                           fm_depth=1100.0, call_type="song", home=(40.4, -3.7)),
    "whistl1": SpeciesSpec("Sibilus altus", "High Whistler", 10400, 10700, 0.3, home=(61.2, -149.9)),
}


class Event(NamedTuple):
    """One placed call: start and end in seconds, species label."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class NoiseProfile:
    """Background: power ~ 1/f**alpha (1 pink, 2 brown), mains hum (whole Hz, 0 = none) ``hum_db`` below the
    noise, slow gusts of log-amplitude std ``wind``."""

    alpha: float = 1.5
    hum_hz: float = 0.0
    hum_db: float = -20.0
    wind: float = 0.0


CallTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # a call as the recorder hears it
Background = Callable[[int, np.random.Generator], np.ndarray]  # n samples of unit-RMS background noise


def _tukey(n: int, frac: float) -> np.ndarray:
    ramp = max(1, int(frac * n / 2))
    w = np.ones(n)
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    w[:ramp], w[n - ramp :] = edge, edge[::-1]
    return w


def make_call(species: str | SpeciesSpec, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One call with random pitch (~3 %), duration (~12 %), modulation rate (~5 %), phase and level.

    Args:
        species: a ``SPECIES`` label or a ``SpeciesSpec``.
        sr, rng: sample rate (frequencies scale by ``min(1, sr / 25600)``, within 50 Hz .. 0.47 sr), generator.

    Returns:
        float32 waveform (T,) with peak amplitude in [0.5, 1].

    Raises:
        KeyError: unknown label.
    """
    spec = SPECIES[species] if isinstance(species, str) else species
    scale = min(1.0, sr / _SCALE_SR)
    pitch = float(np.exp(np.clip(rng.normal(0.0, 0.03), -0.08, 0.08)))
    dur = spec.duration * float(np.exp(np.clip(rng.normal(0.0, 0.12), -0.3, 0.3)))
    rate = float(np.exp(np.clip(rng.normal(0.0, 0.05), -0.12, 0.12)))
    n = max(round(dur * sr), 32)
    t = np.arange(n) / sr
    f0, f1 = spec.f_start * scale * pitch, spec.f_end * scale * pitch
    freq = f0 * (f1 / f0) ** (t / dur)
    if spec.fm_rate > 0:
        fm_phase = 2 * np.pi * spec.fm_rate * rate * t + rng.uniform(0, 2 * np.pi)
        freq = freq + spec.fm_depth * scale * pitch * np.sin(fm_phase)
    f_top = _F_MAX * scale
    freq = np.clip(freq, 50.0, f_top)
    phase = 2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi)
    y = np.zeros(n)
    for k, amp in enumerate(spec.harmonics, start=1):
        y += amp * np.sin(k * phase) * (k * freq <= f_top)  # harmonics above the band are dropped
    env = _tukey(n, 0.25)
    if spec.am_rate > 0:
        u = (spec.am_rate * rate * t + rng.uniform()) % 1.0  # position inside the pulse period, [0, 1)
        env = env * np.where(u < spec.am_duty, 0.5 - 0.5 * np.cos(2 * np.pi * u / spec.am_duty), 0.0)
    y *= env * rng.uniform(0.5, 1.0) / max(np.abs(y * env).max(), 1e-9)
    return y.astype(np.float32)


def background(n: int, sr: int, rng: np.random.Generator, profile: NoiseProfile) -> np.ndarray:
    """Unit-RMS float32 noise (+ gusts, hum) of ``n`` samples, coloured in the frequency domain."""
    m = 1 << max(int(np.ceil(np.log2(max(n, 2)))), 1)  # power-of-two FFT, then truncate
    spec = rng.standard_normal(m + 2, dtype=np.float32).view(np.complex64)
    spec *= np.maximum(np.fft.rfftfreq(m, 1.0 / sr).astype(np.float32), 20.0) ** np.float32(-profile.alpha / 2)
    spec[0] = 0.0
    y = np.fft.irfft(spec, m)[:n]
    y /= max(float(np.sqrt(np.mean(y**2))), 1e-12)
    if profile.wind > 0:
        knots = n // max(sr // 2, 1) + 2  # a new gust level every 0.5 s
        gust = np.interp(np.arange(n), np.linspace(0, n, knots), rng.standard_normal(knots))
        y *= np.exp(profile.wind * gust).astype(np.float32)
    hz = round(profile.hum_hz)
    if hz > 0:  # one exact period of the hum (whole cycles at sr), tiled from a random offset
        x = 2 * np.pi * hz * np.arange(sr // math.gcd(sr, hz)) / sr
        period = np.sqrt(2) * 10 ** (profile.hum_db / 20) * (np.sin(x) + np.sin(2 * x) / 2 + np.sin(3 * x) / 3)
        y += np.resize(np.roll(period, -int(rng.integers(len(period)))), n).astype(np.float32)
    return y / max(float(np.sqrt(np.mean(y**2))), 1e-12)


def _add(y: np.ndarray, call: np.ndarray, start: int) -> int:
    call = call[: len(y) - start]
    y[start : start + len(call)] += call
    return len(call)


def _finish(y: np.ndarray, signal_rms: float, snr_db: float | None, noise: NoiseProfile | None, sr: int,
            rng: np.random.Generator, make_background: Background | None = None) -> np.ndarray:
    if snr_db is not None:
        bg = (make_background(len(y), rng) if make_background is not None
              else background(len(y), sr, rng, noise or NoiseProfile()))
        y += bg * np.float32(signal_rms / 10 ** (snr_db / 20))
    return y * np.float32(rng.uniform(0.3, 0.9) / max(float(np.abs(y).max()), 1e-9))


def make_clip(primary: str, sr: int, rng: np.random.Generator, *, seconds: float,
              secondary: str | None = None, snr_db: float | None = 10.0, secondary_gain_db: float = -10.0,
              noise: NoiseProfile | None = None, n_calls: int | None = None) -> tuple[np.ndarray, list[Event]]:
    """A training clip: ``primary`` calls at random times, 1-2 quieter ``secondary`` calls, background noise.

    Args:
        primary: focal ``SPECIES`` label.
        sr, rng: sample rate in Hz, random generator.
        seconds: clip length.
        secondary, secondary_gain_db: optional second species, played that many dB below its natural level.
        snr_db: RMS of the primary calls over the noise RMS in dB; ``None`` for a clean clip.
        noise: background profile (default ``NoiseProfile()``).
        n_calls: number of primary calls (default random in 1 .. 1 + seconds // 3).

    Returns:
        (float32 waveform (round(seconds * sr),) with peak in [0.3, 0.9], events sorted by start).
    """
    n = max(round(seconds * sr), 1)
    y = np.zeros(n, dtype=np.float32)
    n_calls = n_calls if n_calls is not None else int(rng.integers(1, 2 + int(seconds // 3)))
    calls = [(primary, 1.0)] * n_calls
    if secondary is not None:
        calls += [(secondary, 10 ** (secondary_gain_db / 20))] * int(rng.integers(1, 3))
    events, power, count = [], 0.0, 0
    for i, (label, gain) in enumerate(calls):
        call = make_call(label, sr, rng) * np.float32(gain)
        start = int(rng.integers(0, max(n - len(call), 0) + 1))
        length = _add(y, call, start)
        events.append(Event(start / sr, (start + length) / sr, label))
        if i < n_calls:
            power, count = power + float(np.sum(call[:length].astype(np.float64) ** 2)), count + length
    return _finish(y, float(np.sqrt(power / max(count, 1))), snr_db, noise, sr, rng), sorted(events)


def make_soundscape(species: Sequence[str], sr: int, rng: np.random.Generator, *, seconds: float = 60.0,
                    window: float = 5.0, max_species: int = 3, snr_db: float | None = 10.0,
                    noise: NoiseProfile | None = None, call_transform: CallTransform | None = None,
                    make_background: Background | None = None) -> tuple[np.ndarray, list[Event]]:
    """A long recording in which each ``window``-second window holds 0 .. ``max_species`` (<= 5) species.

    Each species calls 1-2 times per window at -10..0 dB; every call lies inside one window (0.1 s margins).

    Args:
        species: labels to draw from.
        sr, rng: sample rate in Hz, random generator.
        seconds: length; window k covers ``[k * window, (k + 1) * window)``.
        window: window length in seconds.
        max_species: most species in one window.
        snr_db: mean call RMS over the noise RMS in dB; ``None`` for no background.
        noise: background profile (default ``NoiseProfile()``).
        call_transform: ``f(call, rng) -> call`` applied to each call before it is placed (e.g. distance and
            reverberation, :func:`nfaudio.synth.domain.propagate`); the SNR is measured on the transformed calls.
        make_background: ``f(n, rng) -> unit-RMS noise`` instead of the ``noise`` profile's background.

    Returns:
        (float32 waveform (round(seconds * sr),), events sorted by start).
    """
    n = max(round(seconds * sr), 1)
    y = np.zeros(n, dtype=np.float32)
    weights = np.array([1.0, 1.4, 1.0, 0.6, 0.4, 0.3])[: max_species + 1]
    margin, events, power, count = 0.1, [], 0.0, 0
    for w in range(int(np.ceil(seconds / window - 1e-9))):
        w0, w1 = w * window, min((w + 1) * window, seconds)
        k = min(int(rng.choice(len(weights), p=weights / weights.sum())), len(species))
        for label in rng.choice(list(species), size=k, replace=False):
            for _ in range(int(rng.integers(1, 3))):
                call = make_call(str(label), sr, rng)
                if call_transform is not None:
                    call = call_transform(call, rng)
                call = call[: max(int((w1 - w0 - 2 * margin) * sr), 1)]
                power, count = power + float(np.sum(call.astype(np.float64) ** 2)), count + len(call)
                start = round(rng.uniform(w0 + margin, max(w1 - margin - len(call) / sr, w0 + margin)) * sr)
                length = _add(y, call * np.float32(10 ** (rng.uniform(-10.0, 0.0) / 20)), start)
                events.append(Event(start / sr, (start + length) / sr, str(label)))
    rms = float(np.sqrt(power / count)) if count else 0.3
    return _finish(y, rms, snr_db, noise, sr, rng, make_background), sorted(events)


def events_to_labels(events: Sequence[tuple[float, float, str]], classes: Sequence[str], seconds: float,
                     window: float = 5.0, min_fraction: float = 0.5, min_seconds: float = 0.5) -> np.ndarray:
    """Per-window 0/1 labels; a call counts where the window holds >= ``min_fraction`` of it or >= ``min_seconds``.

    Returns:
        int64 array (n_windows, len(classes)); window k covers ``[k * window, (k + 1) * window)``.

    Raises:
        ValueError: an event label is not in ``classes``.
    """
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((int(np.ceil(seconds / window - 1e-9)), len(classes)), dtype=np.int64)
    for start, end, label in events:
        if label not in index:
            raise ValueError(f"event label {label!r} is not in classes {list(classes)}")
        for w in range(len(out)):
            overlap = min(end, (w + 1) * window) - max(start, w * window)
            if overlap > 0 and (overlap >= min_fraction * (end - start) or overlap >= min_seconds):
                out[w, index[label]] = 1
    return out
