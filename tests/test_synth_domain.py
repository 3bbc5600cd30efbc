"""The synthetic target domain: distance, air absorption, reverberation, other background, an unlabelled pool."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from nfaudio.synth import SynthConfig, TargetDomain, generate_dataset, propagate, target_background

SR = 32000


def _tone(freq: float, seconds: float = 0.5) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR).astype(np.float32)


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(y, np.float64) ** 2)))


@pytest.mark.parametrize(("freq", "distance"), [(1000.0, 40.0), (4000.0, 40.0), (10000.0, 100.0)])
def test_distance_spreads_and_absorbs_by_the_formula(freq: float, distance: float) -> None:
    dry = TargetDomain(distance_m=(distance, distance), rt60_s=(0.0, 0.0), wet=(0.0, 0.0))
    y = propagate(_tone(freq), SR, np.random.default_rng(0), dry)
    spreading = -20 * np.log10(distance / dry.ref_distance_m)
    expected_db = spreading - dry.absorption_db * (freq / 1000) ** 1.7 * distance / 100
    measured_db = 20 * np.log10(_rms(y[2000:-2000]) / _rms(_tone(freq)[2000:-2000]))  # away from FFT edges
    assert measured_db == pytest.approx(expected_db, abs=0.3)


def test_reverberation_adds_a_tail_that_decays_at_rt60() -> None:
    rt60 = 0.6
    wet_only = TargetDomain(distance_m=(10.0, 10.0), absorption_db=0.0, rt60_s=(rt60, rt60), wet=(1.0, 1.0))
    call = np.random.default_rng(9).standard_normal(int(0.2 * SR)).astype(np.float32)  # broadband: a smooth decay
    y = propagate(call, SR, np.random.default_rng(1), wet_only).astype(np.float64)
    assert len(y) == len(call) + int(rt60 * SR)
    assert np.sum(y**2) == pytest.approx(np.sum(call.astype(np.float64) ** 2), rel=1e-4)  # energy kept
    end = len(call)
    half = int(rt60 / 4 * SR)  # two quarter-rt60 slices after the call: 15 dB apart at -60 dB per rt60
    first, second = np.sum(y[end : end + half] ** 2), np.sum(y[end + half : end + 2 * half] ** 2)
    assert 10 * np.log10(first / second) == pytest.approx(15.0, abs=3.0)
    dry = dataclasses.replace(wet_only, wet=(0.0, 0.0))
    np.testing.assert_allclose(propagate(call, SR, np.random.default_rng(1), dry)[:end], call, atol=1e-6)


def test_target_background_is_unit_rms_with_an_insect_band() -> None:
    always = TargetDomain(insect_prob=1.0, insect_db=(6.0, 6.0))
    never = dataclasses.replace(always, insect_prob=0.0)
    n = 4 * SR

    def band_share(y: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(y)) ** 2
        f = np.fft.rfftfreq(len(y), 1 / SR)
        return float(power[(f >= 4000) & (f <= 7500)].sum() / power.sum())

    with_insects = target_background(n, SR, np.random.default_rng(2), always)
    without = target_background(n, SR, np.random.default_rng(2), never)
    assert _rms(with_insects) == pytest.approx(1.0, rel=1e-4)
    assert _rms(without) == pytest.approx(1.0, rel=1e-4)
    assert band_share(with_insects) > 0.5 > band_share(without)


@pytest.mark.parametrize("bad", [{"distance_m": (50.0, 10.0)}, {"wet": (0.0, 1.5)}, {"max_species": 6},
                                 {"insect_prob": -0.1}, {"distance_m": (0.0, 10.0)}])
def test_domain_validation(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TargetDomain(**bad)


def test_dataset_with_a_target_domain_and_an_unlabelled_pool(tmp_path) -> None:
    base = SynthConfig(n_species=4, clips_per_species=2, clip_seconds=(1.0, 2.0), n_soundscapes=2,
                       soundscape_seconds=10.0, seed=5)
    shifted = dataclasses.replace(base, target_domain=TargetDomain(max_species=4), n_unlabeled_soundscapes=3)
    plain, data = generate_dataset(tmp_path / "plain", base), generate_dataset(tmp_path / "target", shifted)
    # the training clips are the same; every soundscape is recorded in the target domain
    for f in pd.read_csv(data.metadata)["filename"]:
        np.testing.assert_array_equal(sf.read(data.root / "train_audio" / f)[0],
                                      sf.read(plain.root / "train_audio" / f)[0])
    a, b = (sf.read(d.root / "test_soundscapes" / "soundscape_00000.ogg")[0] for d in (plain, data))
    assert len(a) == len(b) == 10 * SR
    assert not np.allclose(a, b, atol=1e-3)
    pool = sorted(p.name for p in data.unlabeled.iterdir())
    assert pool == [f"unlabeled_{i:05d}.ogg" for i in range(3)]
    assert not plain.unlabeled.exists()
    truth = pd.read_csv(data.unlabeled_truth)
    assert truth["row_id"].tolist() == [f"unlabeled_{i:05d}_{e}" for i in range(3) for e in (5, 10)]
    assert list(truth.columns) == ["row_id", *data.classes]
    labels = pd.read_csv(data.soundscape_labels)
    assert set(labels["row_id"]).isdisjoint(truth["row_id"])  # the pool is not the evaluation set
    assert labels[data.classes].to_numpy().sum(1).max() <= 4
    test_audio = {p.name: sf.read(p)[0] for p in (data.root / "test_soundscapes").iterdir()}
    for p in data.unlabeled.iterdir():
        assert all(not np.array_equal(sf.read(p)[0], y) for y in test_audio.values())
    # deterministic and reused; the stored config names the domain
    again = generate_dataset(tmp_path / "again", shifted)
    for p in data.unlabeled.iterdir():
        np.testing.assert_array_equal(sf.read(p)[0], sf.read(again.unlabeled / p.name)[0])
    assert again.unlabeled_truth.read_bytes() == data.unlabeled_truth.read_bytes()
    (data.unlabeled / "unlabeled_00001.ogg").unlink()  # incomplete: regenerated on the next call
    generate_dataset(tmp_path / "target", shifted)
    assert (data.unlabeled / "unlabeled_00001.ogg").exists()
