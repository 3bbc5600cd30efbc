"""Synthetic BirdCLEF-style dataset for the demo and the tests.

A species is a row of generator parameters (frequency trajectory, amplitude/frequency modulation, harmonics),
not a subclass. Calls get random pitch, duration, rate and level. Clips mix calls of a primary species (sometimes
a quieter secondary one) into coloured noise with optional mains hum and wind gusts. Soundscapes hold 0-3
species per 5-second window, each call inside one window, so per-window labels are unambiguous. Layout (Kaggle
BirdCLEF 2021-2025): ``train_metadata.csv``, ``train_audio/<label>/<id>.ogg``, ``taxonomy.csv``,
``sample_submission.csv``, ``test_soundscapes/*.ogg``, plus ``test_soundscapes_labels.csv`` (row_id
``<stem>_<end second>``, one 0/1 column per class) and ``test_soundscapes_events.csv`` (every placed call).
All randomness comes from ``np.random.default_rng``: one seed gives identical CSVs and decoded audio.
"""

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import soundfile as sf

from nfaudio.fileio import atomic_path, write_csv, write_json

__all__ = ["SPECIES", "Event", "NoiseProfile", "SpeciesSpec", "SynthConfig", "SynthDataset", "events_to_labels",
           "generate_dataset", "make_call", "make_clip", "make_soundscape"]

logger = logging.getLogger(__name__)

SYNTH_VERSION = 1  # bump when the generator changes so that stored datasets get regenerated
_F_MAX = 12000.0  # top call frequency (Hz) at sample rates >= _SCALE_SR
_SCALE_SR = 25600.0  # below it, call frequencies scale by sr / _SCALE_SR (12 kHz -> 7.5 kHz at 16 kHz)
_CONFIG_FILE, _MARKER_FILE = "synth_config.json", ".synth_incomplete"
_OUTPUTS = ("train_audio", "test_soundscapes", "train_metadata.csv", "taxonomy.csv", "sample_submission.csv",
            "test_soundscapes_labels.csv", "test_soundscapes_events.csv", _CONFIG_FILE)
_AUTHORS = ("Ana Souza", "Ben Okafor", "Chen Wei", "Dana Kowalski", "Emil Larsen", "Farah Haddad", "Gita Rao",
            "Hugo Moreau", "Ines Ortega", "Jonas Berg", "Kemi Adeyemi", "Lena Fischer", "Marta Novak",
            "Nils Holm", "Olga Petrova", "Pablo Ruiz")


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


@dataclass(frozen=True)
class SynthConfig:
    """What ``generate_dataset`` makes (stored as ``synth_config.json``); ``__post_init__`` raises ValueError."""

    n_species: int = 8
    clips_per_species: int = 20
    clip_seconds: tuple[float, float] = (3.0, 15.0)
    n_soundscapes: int = 5
    soundscape_seconds: float = 60.0
    window_seconds: float = 5.0
    sample_rate: int = 32000
    seed: int = 0
    snr_db: tuple[float, float] = (0.0, 20.0)
    secondary_prob: float = 0.3
    secondary_gain_db: tuple[float, float] = (-15.0, -6.0)
    max_species_per_window: int = 3
    authors_per_species: int = 3
    hum_prob: float = 0.3

    def __post_init__(self) -> None:
        n_win = self.soundscape_seconds / self.window_seconds if self.window_seconds > 0 else 0.5
        checks = {
            "n_species": 2 <= self.n_species <= len(SPECIES), "clips_per_species": self.clips_per_species >= 1,
            "clip_seconds": 0.5 <= self.clip_seconds[0] <= self.clip_seconds[1],
            "n_soundscapes": self.n_soundscapes >= 0, "window_seconds": self.window_seconds >= 2.0,
            "soundscape_seconds": n_win >= 1 and abs(n_win - round(n_win)) < 1e-9,
            "sample_rate": self.sample_rate >= 8000, "snr_db": self.snr_db[0] <= self.snr_db[1],
            "secondary_prob": 0.0 <= self.secondary_prob <= 1.0,
            "secondary_gain_db": self.secondary_gain_db[0] <= self.secondary_gain_db[1] <= 0.0,
            "max_species_per_window": 0 <= self.max_species_per_window <= 5,
            "authors_per_species": 1 <= self.authors_per_species <= len(_AUTHORS),
            "hum_prob": 0.0 <= self.hum_prob <= 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid SynthConfig field(s) {bad} (soundscape_seconds must be a multiple of "
                             f"window_seconds): {self}")

    @property
    def classes(self) -> list[str]:
        """Labels of the first ``n_species`` rows of ``SPECIES``, sorted: the taxonomy order."""
        return sorted(list(SPECIES)[: self.n_species])


@dataclass(frozen=True)
class SynthDataset:
    """Paths of a generated dataset; ``root`` holds the BirdCLEF layout."""

    root: Path
    classes: list[str]
    metadata: Path
    soundscape_labels: Path

    @property
    def taxonomy(self) -> Path:
        return self.root / "taxonomy.csv"

    @property
    def sample_submission(self) -> Path:
        return self.root / "sample_submission.csv"

    @property
    def soundscape_events(self) -> Path:
        return self.root / "test_soundscapes_events.csv"


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


def _background(n: int, sr: int, rng: np.random.Generator, profile: NoiseProfile) -> np.ndarray:
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
            rng: np.random.Generator) -> np.ndarray:
    if snr_db is not None:
        y += _background(len(y), sr, rng, noise or NoiseProfile()) * np.float32(signal_rms / 10 ** (snr_db / 20))
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
                    noise: NoiseProfile | None = None) -> tuple[np.ndarray, list[Event]]:
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
                call = make_call(str(label), sr, rng)[: max(int((w1 - w0 - 2 * margin) * sr), 1)]
                power, count = power + float(np.sum(call.astype(np.float64) ** 2)), count + len(call)
                start = round(rng.uniform(w0 + margin, max(w1 - margin - len(call) / sr, w0 + margin)) * sr)
                length = _add(y, call * np.float32(10 ** (rng.uniform(-10.0, 0.0) / 20)), start)
                events.append(Event(start / sr, (start + length) / sr, str(label)))
    rms = float(np.sqrt(power / count)) if count else 0.3
    return _finish(y, rms, snr_db, noise, sr, rng), sorted(events)


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


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    write_csv(df, path, lineterminator="\n")


def _write_ogg(path: Path, y: np.ndarray, sr: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(y, -1.0, 1.0), sr, format="OGG", subtype="VORBIS")


def _stored_config(config: SynthConfig) -> dict:
    return json.loads(json.dumps({"synth_version": SYNTH_VERSION, "config": asdict(config)}))


def _read_stored(root: Path) -> dict | None:
    try:
        return json.loads((root / _CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, config: SynthConfig) -> bool:
    if _read_stored(root) != _stored_config(config) or (root / _MARKER_FILE).exists():
        return False
    try:
        files = list(pd.read_csv(root / "train_metadata.csv")["filename"].map(lambda f: f"train_audio/{f}"))
        stems = [r.rsplit("_", 1)[0] for r in pd.read_csv(root / "test_soundscapes_labels.csv")["row_id"]]
    except (OSError, ValueError, KeyError):
        return False
    files += [f"test_soundscapes/{s}.ogg" for s in sorted(set(stems))] + list(_OUTPUTS[2:])
    return all((root / f).is_file() for f in files)


def _prepare_root(root: Path, config: SynthConfig, overwrite: bool) -> None:
    if not overwrite and root.exists() and any(root.iterdir()):
        stored = _read_stored(root)
        if stored is not None and stored != _stored_config(config):
            raise FileExistsError(f"{root} holds a synthetic dataset made with another config; pass "
                                  "overwrite=True to replace it")
        if stored is None and not (root / _MARKER_FILE).exists():
            raise FileExistsError(f"{root} is not empty and holds no synthetic dataset; pass overwrite=True "
                                  "to write one there anyway")
        logger.warning("regenerating the incomplete synthetic dataset in %s", root)
    for name in _OUTPUTS:
        if (root / name).is_dir():
            shutil.rmtree(root / name)
        elif (root / name).exists():
            (root / name).unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER_FILE).write_text(json.dumps(_stored_config(config)))


def _noise_profile(rng: np.random.Generator, hum_prob: float) -> NoiseProfile:
    hum = float(rng.choice([50.0, 60.0])) if rng.uniform() < hum_prob else 0.0
    return NoiseProfile(alpha=float(rng.uniform(1.0, 2.0)), hum_hz=hum,
                        hum_db=float(rng.uniform(-25.0, -8.0)), wind=float(rng.uniform(0.0, 0.6)))


def _write_clips(root: Path, config: SynthConfig, classes: list[str]) -> list[dict]:
    """Training clips; each author has a recording profile (noise colour, hum, wind) shared by its clips."""
    setup = np.random.default_rng([config.seed, 0])
    n_pool = min(len(_AUTHORS), max(config.authors_per_species, len(classes) * config.authors_per_species // 2))
    pool = list(_AUTHORS[:n_pool])
    authors = {c: [str(a) for a in setup.choice(pool, config.authors_per_species, replace=False)]
               for c in classes}
    profiles = {a: _noise_profile(setup, config.hum_prob) for a in pool}
    lo, hi = config.snr_db
    rows = []
    for si, label in enumerate(classes):
        spec = SPECIES[label]
        for j in range(config.clips_per_species):
            rng = np.random.default_rng([config.seed, 1, si, j])
            seconds, snr = round(float(rng.uniform(*config.clip_seconds)), 2), float(rng.uniform(lo, hi))
            secondary = None
            if rng.uniform() < config.secondary_prob:
                secondary = str(rng.choice([c for c in classes if c != label]))
            author = authors[label][int(rng.integers(config.authors_per_species))]
            y, _ = make_clip(label, config.sample_rate, rng, seconds=seconds, secondary=secondary, snr_db=snr,
                             secondary_gain_db=float(rng.uniform(*config.secondary_gain_db)),
                             noise=profiles[author])
            quality = 1 + 4 * (snr - lo) / max(hi - lo, 1e-9) + rng.normal(0.0, 0.5)  # rating follows SNR
            xc_id = f"SYN{si:02d}{j:04d}"
            _write_ogg(root / "train_audio" / label / f"{xc_id}.ogg", y, config.sample_rate)
            rows.append({
                "primary_label": label, "secondary_labels": str([secondary] if secondary else []),
                "type": str([spec.call_type]),
                "latitude": round(spec.home[0] + float(rng.normal(0.0, 1.5)), 4),
                "longitude": round(spec.home[1] + float(rng.normal(0.0, 1.5)), 4),
                "scientific_name": spec.scientific_name, "common_name": spec.common_name, "author": author,
                "license": "Creative Commons Attribution-NonCommercial-ShareAlike 4.0",
                "rating": float(np.clip(np.round(2 * quality) / 2, 1.0, 5.0)),
                "url": f"synthetic://nfaudio/{label}/{xc_id}", "filename": f"{label}/{xc_id}.ogg",
            })
    return rows


def generate_dataset(root: str | Path, config: SynthConfig = SynthConfig(),  # noqa: B008 (frozen)
                     overwrite: bool = False) -> SynthDataset:
    """Write a synthetic BirdCLEF-style dataset under ``root``, or reuse a complete one made with ``config``.

    Args:
        root: target folder (created when missing).
        config: what to generate.
        overwrite: regenerate even when ``root`` holds this dataset; deletes the generated paths
            (``train_audio/``, ``test_soundscapes/``, the CSVs) first, whatever made them.

    Returns:
        the dataset's paths and class list.

    Raises:
        FileExistsError: ``overwrite`` is False and ``root`` holds another config's dataset or foreign files.
    """
    root = Path(root)
    classes, sr, win = config.classes, config.sample_rate, config.window_seconds
    dataset = SynthDataset(root, classes, root / "train_metadata.csv", root / "test_soundscapes_labels.csv")
    if not overwrite and _is_complete(root, config):
        logger.info("reusing the synthetic dataset in %s", root)
        return dataset
    _prepare_root(root, config, overwrite)
    t0 = time.perf_counter()
    rows = _write_clips(root, config, classes)
    row_ids, tables, event_rows = [], [np.zeros((0, len(classes)), dtype=np.int64)], []
    for i in range(config.n_soundscapes):
        rng = np.random.default_rng([config.seed, 2, i])
        stem = f"soundscape_{i:05d}"
        y, events = make_soundscape(classes, sr, rng, seconds=config.soundscape_seconds, window=win,
                                    max_species=config.max_species_per_window,
                                    snr_db=float(rng.uniform(*config.snr_db)),
                                    noise=_noise_profile(rng, config.hum_prob))
        _write_ogg(root / "test_soundscapes" / f"{stem}.ogg", y, sr)
        tables.append(events_to_labels(events, classes, config.soundscape_seconds, win))
        row_ids += [f"{stem}_{(w + 1) * win:g}" for w in range(len(tables[-1]))]
        event_rows += [(stem, round(e.start, 6), round(e.end, 6), e.label) for e in events]
    table, ids = np.concatenate(tables), pd.DataFrame({"row_id": row_ids})
    _write_csv(pd.DataFrame(rows), dataset.metadata)
    _write_csv(pd.DataFrame({
        "primary_label": classes, "inat_taxon_id": [100001 + list(SPECIES).index(c) for c in classes],
        "scientific_name": [SPECIES[c].scientific_name for c in classes],
        "common_name": [SPECIES[c].common_name for c in classes], "class_name": "Aves"}), dataset.taxonomy)
    _write_csv(pd.concat([ids, pd.DataFrame(table, columns=classes)], axis=1), dataset.soundscape_labels)
    uniform = pd.DataFrame(np.full(table.shape, round(1.0 / len(classes), 6)), columns=classes)
    _write_csv(pd.concat([ids, uniform], axis=1), dataset.sample_submission)
    _write_csv(pd.DataFrame(event_rows, columns=["soundscape", "start", "end", "label"]),
               dataset.soundscape_events)
    write_json(root / _CONFIG_FILE, _stored_config(config), sort_keys=True)
    (root / _MARKER_FILE).unlink()
    logger.info("generated %d clips and %d soundscapes (%d classes, %d Hz) in %s in %.1f s", len(rows),
                config.n_soundscapes, len(classes), sr, root, time.perf_counter() - t0)
    return dataset
