"""Tests for nfaudio.synth: call structure, clip/soundscape assembly, labels, on-disk layout, determinism, reuse."""

import ast
import dataclasses
import json
import logging
import re

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nfaudio.synth import (
    SPECIES,
    NoiseProfile,
    SynthConfig,
    SynthDataset,
    events_to_labels,
    generate_dataset,
    make_call,
    make_clip,
    make_soundscape,
)

SR = 16000
SMALL = SynthConfig(n_species=6, clips_per_species=3, clip_seconds=(2.0, 4.0), n_soundscapes=1,
                    soundscape_seconds=20.0, sample_rate=SR, seed=7, secondary_prob=0.5)
TINY = SynthConfig(n_species=2, clips_per_species=1, clip_seconds=(1.0, 1.0), n_soundscapes=1,
                   soundscape_seconds=5.0, sample_rate=8000, seed=3)
CSVS = ("train_metadata.csv", "taxonomy.csv", "sample_submission.csv", "test_soundscapes_labels.csv",
        "test_soundscapes_events.csv", "synth_config.json")
METADATA_COLUMNS = ["primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name",
                    "common_name", "author", "license", "rating", "url", "filename"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SynthDataset:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "data", SMALL)


def _power_spec(y: np.ndarray, n_fft: int = 512, hop: int = 64) -> np.ndarray:
    """|STFT|^2, shape (frames, n_fft // 2 + 1)."""
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(y, (0, n_fft)), n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2


def _dominant_track(y: np.ndarray, sr: int, n_fft: int = 512, hop: int = 64) -> np.ndarray:
    """Peak frequency (Hz) of every frame holding > 10 % of the loudest frame's energy."""
    p = _power_spec(y, n_fft, hop)
    energy = p.sum(1)
    return p[energy > 0.1 * energy.max()].argmax(1) * sr / n_fft


def _periodicity(x: np.ndarray, rate: float) -> float:
    """Repetition rate (Hz) of ``x`` sampled at ``rate``: the autocorrelation's highest peak past its central lobe."""
    x = x - x.mean()
    ac = np.correlate(x, x, "full")[len(x) - 1 :]
    start = int(np.argmax(ac < 0))  # first negative lag
    return rate / (start + int(np.argmax(ac[start:])))


@pytest.mark.parametrize("sr", [16000, 32000])
@pytest.mark.parametrize("label", list(SPECIES))
def test_make_call_level_and_band(label: str, sr: int) -> None:
    y = make_call(label, sr, np.random.default_rng(0))
    assert y.dtype == np.float32
    assert y.ndim == 1
    assert np.isfinite(y).all()
    assert 0.5 - 1e-6 <= np.abs(y).max() <= 1.0 + 1e-6
    power = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(y), 1.0 / sr)
    lo, hi = (600.0, 7500.0) if sr == 16000 else (900.0, 12000.0)  # 1-12 kHz, scaled by 0.625 at 16 kHz
    assert power[(f >= lo) & (f <= hi)].sum() > 0.99 * power.sum()


def test_make_call_is_deterministic_and_jittered() -> None:
    assert np.array_equal(make_call("upswee1", SR, np.random.default_rng(5)),
                          make_call("upswee1", SR, np.random.default_rng(5)))
    calls = [make_call("whistl1", SR, np.random.default_rng(i)) for i in range(20)]
    durations = np.array([len(c) / SR for c in calls])
    pitches = np.array([np.median(_dominant_track(c, SR, n_fft=2048)) for c in calls])
    peaks = np.array([np.abs(c).max() for c in calls])
    base = SPECIES["whistl1"].duration
    assert durations.std() > 0.02 * base
    assert (durations >= 0.7 * base).all()
    assert (durations <= 1.4 * base).all()
    assert pitches.std() > 0
    assert peaks.std() > 0.05
    with pytest.raises(KeyError):
        make_call("nosuch1", SR, np.random.default_rng(0))


@pytest.mark.parametrize(("label", "sign"), [("upswee1", 1), ("dnswee1", -1)])
def test_sweep_direction(label: str, sign: int) -> None:
    for seed in range(5):
        track = _dominant_track(make_call(label, SR, np.random.default_rng(seed)), SR)
        slope = np.polyfit(np.arange(len(track)), track, 1)[0]
        assert np.sign(slope) == sign
        quarter = max(len(track) // 4, 1)
        ratio = np.median(track[-quarter:]) / np.median(track[:quarter])
        spec = SPECIES[label]
        # geometric glide: the quarter medians sit at 1/8 and 7/8 of it, so their ratio is (f_end/f_start)**0.75
        assert ratio == pytest.approx((spec.f_end / spec.f_start) ** 0.75, rel=0.1)


@pytest.mark.parametrize("label", ["sltril1", "fstril1", "clictr1"])
def test_pulsed_calls_have_their_am_rate(label: str) -> None:
    rate = SPECIES[label].am_rate
    for seed in range(3):
        y = make_call(label, SR, np.random.default_rng(seed)).astype(np.float64)
        envelope = (y**2).reshape(-1)[: len(y) // 16 * 16].reshape(-1, 16).mean(1)  # 1 kHz energy envelope
        assert _periodicity(envelope, SR / 16) == pytest.approx(rate, rel=0.15)


def test_trills_differ_in_rate_and_band() -> None:
    slow, fast = SPECIES["sltril1"], SPECIES["fstril1"]
    assert fast.am_rate > 2.5 * slow.am_rate
    f_slow = np.median(_dominant_track(make_call("sltril1", SR, np.random.default_rng(1)), SR))
    f_fast = np.median(_dominant_track(make_call("fstril1", SR, np.random.default_rng(1)), SR))
    assert f_fast > 1.5 * f_slow


def test_warble_frequency_oscillates_at_fm_rate() -> None:
    hop = 32
    track = _dominant_track(make_call("warble1", SR, np.random.default_rng(2)), SR, n_fft=256, hop=hop)
    assert _periodicity(track, SR / hop) == pytest.approx(SPECIES["warble1"].fm_rate, rel=0.15)


def test_harmonic_stack_has_overtones() -> None:
    y = make_call("harmon1", SR, np.random.default_rng(0)).astype(np.float64)
    power = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1.0 / SR)
    f0 = f[power.argmax()]
    assert f0 == pytest.approx(SPECIES["harmon1"].f_start * SR / 25600, rel=0.15)

    def band(k: int) -> float:
        return power[np.abs(f - k * f0) < 0.2 * f0].sum()

    assert all(band(k) > 0.05 * band(1) for k in (2, 3, 4))


def test_make_clip_events_secondary_and_snr() -> None:
    rng = np.random.default_rng(0)
    clean, events = make_clip("dnswee1", SR, rng, seconds=6.0, secondary="harmon1", snr_db=None,
                              secondary_gain_db=-12.0, n_calls=3)
    assert clean.shape == (6 * SR,)
    assert clean.dtype == np.float32
    assert 0.3 - 1e-6 <= np.abs(clean).max() <= 0.9 + 1e-6
    assert [e.label for e in events].count("dnswee1") == 3
    assert "harmon1" in {e.label for e in events}
    inside = np.zeros(len(clean), dtype=bool)
    for e in events:
        assert 0.0 <= e.start < e.end <= 6.0
        inside[round(e.start * SR) : round(e.end * SR)] = True
    assert np.abs(clean[~inside]).max() == 0.0  # a clean clip is silent between calls

    def rms(label: str) -> float:
        return float(np.sqrt(np.mean(np.concatenate(
            [clean[round(e.start * SR) : round(e.end * SR)] for e in events if e.label == label]) ** 2)))

    assert rms("harmon1") < rms("dnswee1")
    for snr in (0.0, 15.0):  # measured SNR: (power inside the call - power outside) / power outside
        y, (event,) = make_clip("fstril1", SR, np.random.default_rng(1), seconds=4.0, snr_db=snr,
                                noise=NoiseProfile(alpha=1.0), n_calls=1)
        span = slice(round(event.start * SR), round(event.end * SR))
        mask = np.ones(len(y), dtype=bool)
        mask[span] = False
        p_in, p_out = np.mean(y[span].astype(np.float64) ** 2), np.mean(y[mask].astype(np.float64) ** 2)
        assert 10 * np.log10((p_in - p_out) / p_out) == pytest.approx(snr, abs=1.5)


def test_make_soundscape_places_calls_inside_windows() -> None:
    labels = list(SPECIES)[:6]
    y, events = make_soundscape(labels, SR, np.random.default_rng(4), seconds=30.0, max_species=3, snr_db=None)
    assert y.shape == (30 * SR,)
    assert events
    windows = events_to_labels(events, labels, 30.0)
    assert windows.shape == (6, 6)
    assert windows.sum(1).max() <= 3
    for e in events:
        assert int(e.start // 5) == int((e.end - 1e-9) // 5)  # never straddles a boundary
    for w in range(6):  # silent windows are exactly the ones without events (no background here)
        assert (np.abs(y[w * 5 * SR : (w + 1) * 5 * SR]).max() > 0) == (windows[w].sum() > 0)


def test_events_to_labels_rule() -> None:
    classes = ["a", "b", "c"]
    events = [(4.0, 6.0, "a"),  # 1 s in each window -> both
              (4.8, 5.6, "b"),  # 0.2 s (25 %) in w0 -> no; 0.6 s in w1 -> yes
              (9.9, 10.1, "c")]  # 50 % in each of w1, w2 -> both
    expected = np.array([[1, 0, 0], [1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(events_to_labels(events, classes, 15.0), expected)
    with pytest.raises(ValueError, match="'z'"):
        events_to_labels([(0.0, 1.0, "z")], classes, 5.0)


def test_layout_and_metadata(small: SynthDataset) -> None:
    root = small.root
    meta = pd.read_csv(small.metadata)
    assert list(meta.columns) == METADATA_COLUMNS
    assert len(meta) == 6 * 3
    assert small.classes == SMALL.classes
    assert len(small.classes) == 6
    for row in meta.itertuples():
        label, stem = row.filename.split("/")
        assert label == row.primary_label
        assert re.fullmatch(r"SYN\d{6}\.ogg", stem)
        y, sr = sf.read(root / "train_audio" / row.filename, dtype="float32")
        assert sr == SR
        assert y.ndim == 1
        assert np.isfinite(y).all()
        assert 0 < np.abs(y).max() <= 1.0
        assert 2.0 - 0.01 <= len(y) / sr <= 4.0 + 0.01
        secondary = ast.literal_eval(row.secondary_labels)
        assert isinstance(secondary, list)
        assert set(secondary) <= set(small.classes) - {label}
        assert ast.literal_eval(row.type)[0] in {"call", "song"}
        assert 1.0 <= row.rating <= 5.0
        assert (2 * row.rating) % 1 == 0
        assert -90 <= row.latitude <= 90
        assert -180 <= row.longitude <= 180
    assert meta["secondary_labels"].map(ast.literal_eval).map(len).sum() > 0
    assert meta["author"].nunique() > 1
    taxonomy = pd.read_csv(small.taxonomy)
    assert list(taxonomy.columns[:4]) == ["primary_label", "inat_taxon_id", "scientific_name", "common_name"]
    assert dict(zip(taxonomy["primary_label"], taxonomy["scientific_name"])) == {
        c: SPECIES[c].scientific_name for c in small.classes}
    assert json.loads((root / "synth_config.json").read_text())["config"]["seed"] == SMALL.seed


def test_class_order_is_consistent(small: SynthDataset) -> None:
    taxonomy = pd.read_csv(small.taxonomy)["primary_label"].tolist()
    submission = pd.read_csv(small.sample_submission)
    labels = pd.read_csv(small.soundscape_labels)
    assert taxonomy == small.classes == sorted(small.classes)
    assert list(submission.columns) == list(labels.columns) == ["row_id", *small.classes]
    assert submission["row_id"].tolist() == labels["row_id"].tolist()
    np.testing.assert_allclose(submission[small.classes].sum(axis=1), 1.0, atol=1e-4)


def test_soundscape_labels_match_events(small: SynthDataset) -> None:
    labels = pd.read_csv(small.soundscape_labels)
    assert labels["row_id"].tolist() == [f"soundscape_00000_{end}" for end in (5, 10, 15, 20)]
    y, sr = sf.read(small.root / "test_soundscapes" / "soundscape_00000.ogg", dtype="float32")
    assert sr == SR
    assert len(y) == 20 * SR
    events = pd.read_csv(small.soundscape_events)
    assert set(events["soundscape"]) <= {"soundscape_00000"}
    assert set(events["label"]) <= set(small.classes)
    expected = events_to_labels(list(zip(events["start"], events["end"], events["label"])), small.classes, 20.0)
    table = labels[small.classes].to_numpy()
    np.testing.assert_array_equal(table, expected)
    assert set(np.unique(table)) <= {0, 1}
    assert table.sum(1).max() <= SMALL.max_species_per_window


def test_generation_is_deterministic(small: SynthDataset, tmp_path) -> None:
    again = generate_dataset(tmp_path / "again", SMALL)
    for name in CSVS:
        assert (small.root / name).read_bytes() == (again.root / name).read_bytes(), name
    audio = sorted(p.relative_to(small.root) for p in small.root.rglob("*.ogg"))
    assert audio == sorted(p.relative_to(again.root) for p in again.root.rglob("*.ogg"))
    assert len(audio) == 6 * 3 + 1
    for rel in audio:
        np.testing.assert_array_equal(sf.read(small.root / rel)[0], sf.read(again.root / rel)[0])
    other = generate_dataset(tmp_path / "other", dataclasses.replace(SMALL, seed=8))
    assert (other.metadata.read_bytes() != small.metadata.read_bytes()
            or not np.array_equal(sf.read(other.root / audio[0])[0], sf.read(small.root / audio[0])[0]))


def test_reuse_overwrite_and_refusals(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ds"
    first = generate_dataset(root, TINY)
    stray = root / "train_audio" / "stray.txt"
    stray.write_text("kept on reuse")
    with caplog.at_level(logging.INFO, logger="nfaudio.synth"):
        assert generate_dataset(root, TINY) == first
    assert stray.exists()
    assert "reusing" in caplog.text
    generate_dataset(root, TINY, overwrite=True)
    assert not stray.exists()
    assert (root / "synth_config.json").exists()
    with pytest.raises(FileExistsError, match="another config"):
        generate_dataset(root, dataclasses.replace(TINY, seed=4))
    missing = root / "train_audio" / pd.read_csv(first.metadata)["filename"][0]
    missing.unlink()  # an incomplete dataset of the same config is regenerated without overwrite
    generate_dataset(root, TINY)
    assert missing.exists()
    assert not (root / ".synth_incomplete").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="holds no synthetic dataset"):
        generate_dataset(foreign, TINY)
    assert generate_dataset(foreign, TINY, overwrite=True).metadata.exists()
    assert (foreign / "notes.txt").exists()


@pytest.mark.parametrize("bad", [{"n_species": 1}, {"n_species": 9}, {"clips_per_species": 0},
                                 {"clip_seconds": (5.0, 3.0)}, {"soundscape_seconds": 12.0},
                                 {"snr_db": (10.0, 0.0)}, {"secondary_prob": 1.5},
                                 {"secondary_gain_db": (-3.0, 3.0)}, {"sample_rate": 4000}])
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SynthConfig(**bad)


@pytest.mark.parametrize("snr_db", [None, 10.0])
def test_species_are_learnable(snr_db: float | None) -> None:
    """Mean log-mel band energy + logistic regression separates the species (guards a degenerate generator)."""
    labels = list(SPECIES)[:6]
    mel = librosa.filters.mel(sr=SR, n_fft=512, n_mels=32, fmin=50.0, fmax=SR / 2)
    features, targets = [], []
    for i, label in enumerate(labels):
        for j in range(12):
            y, _ = make_clip(label, SR, np.random.default_rng([i, j]), seconds=2.0, snr_db=snr_db, n_calls=1,
                             noise=NoiseProfile(alpha=1.0, hum_hz=50.0, wind=0.3))
            features.append(np.log(mel @ _power_spec(y, hop=256).T + 1e-10).mean(1))
            targets.append(i)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = cross_val_score(model, np.array(features), targets, cv=3).mean()
    assert accuracy > 0.8  # chance is 1/6
