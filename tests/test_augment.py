"""Tests for nfaudio.augment: waveform transforms, Compose/OneOf, mixup."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import welch

from nfaudio import augment as A
from nfaudio.audio import AudioError

SR = 16000


def _tone(n: int = SR, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean
    return float(10 * np.log10(np.mean(np.square(clean, dtype=np.float64)) / np.mean(noise**2)))


def _drawn_snr(seed: int, lo: float, hi: float) -> float:
    """The SNR a transform draws: __call__ draws the p-coin first, then apply draws the SNR."""
    rng = np.random.default_rng(seed)
    rng.random()
    return float(rng.uniform(lo, hi))


# ----------------------------------------------------------------------------- single transforms
def test_gain_scales_within_range_and_keeps_dtype() -> None:
    y = _tone()
    for seed in range(20):
        out = A.Gain(-6, 6)(y, SR, seed)
        ratio = out / np.where(y == 0, 1, y)
        gain_db = 20 * np.log10(np.median(ratio))
        assert out.dtype == np.float32
        assert -6 - 1e-4 <= gain_db <= 6 + 1e-4
        np.testing.assert_allclose(out, y * np.median(ratio), rtol=1e-5, atol=1e-7)


def _shifted(y: np.ndarray, shift: int, rollover: bool) -> np.ndarray:
    if rollover:
        return np.roll(y, shift)
    out = np.zeros_like(y)
    if shift >= 0:
        out[shift:] = y[: len(y) - shift]
    else:
        out[:shift] = y[-shift:]
    return out


@pytest.mark.parametrize("rollover", [True, False])
def test_time_shift_is_a_bounded_shift(rollover: bool) -> None:
    y = np.arange(1, 101, dtype=np.float32)
    seen = set()
    for seed in range(30):
        out = A.TimeShift(max_fraction=0.2, rollover=rollover)(y, SR, seed)
        matches = [s for s in range(-20, 21) if np.array_equal(out, _shifted(y, s, rollover))]
        assert len(matches) == 1  # exactly one shift within +-20 % explains the output
        seen.add(matches[0])
    assert min(seen) < 0 < max(seen)


@pytest.mark.parametrize("color", ["white", "pink"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_add_noise_measured_snr_matches_drawn_value(color: str, seed: int) -> None:
    y = _tone()
    out = A.AddNoise(min_snr_db=0, max_snr_db=30, color=color)(y, SR, seed)
    assert out.dtype == np.float32
    assert abs(_snr_db(y, out) - _drawn_snr(seed, 0, 30)) < 0.5


def test_pink_noise_slope_is_minus_3_db_per_octave_and_white_is_flat() -> None:
    rng = np.random.default_rng(0)
    slopes = {}
    for color in ("white", "pink"):
        freqs, psd = welch(A.colored_noise(2**18, rng, color), fs=32000, nperseg=4096)
        band = (freqs >= 50) & (freqs <= 12000)
        slopes[color] = np.polyfit(np.log2(freqs[band]), 10 * np.log10(psd[band]), 1)[0]  # dB per octave
    assert slopes["pink"] == pytest.approx(-3.01, abs=0.25)
    assert slopes["white"] == pytest.approx(0.0, abs=0.25)


def test_add_noise_on_silence_returns_silence() -> None:
    out = A.AddNoise()(np.zeros(1000, np.float32), SR, 0)
    np.testing.assert_array_equal(out, 0.0)


def test_background_noise_resamples_repeats_caches_and_hits_snr(tmp_path, monkeypatch) -> None:
    noise_path = tmp_path / "noise.wav"
    sf.write(noise_path, 0.1 * np.random.default_rng(5).standard_normal(4000).astype(np.float32), 8000)  # 0.5 s
    import nfaudio.audio

    calls = []
    real_load = nfaudio.audio.load
    monkeypatch.setattr(nfaudio.audio, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    aug = A.BackgroundNoise([noise_path], min_snr_db=5, max_snr_db=15)
    y = _tone(SR)  # 1 s at 16 kHz: longer than the noise file
    for seed in range(3):
        out = aug(y, SR, seed)
        assert out.shape == y.shape
        assert out.dtype == np.float32
        rng = np.random.default_rng(seed)
        rng.random()
        rng.integers(1)
        assert abs(_snr_db(y, out) - rng.uniform(5, 15)) < 0.5
    assert calls == [{"sr": SR}]  # decoded once, at the clip's sample rate
    assert aug._cache[(str(noise_path), SR)].shape == (8000,)  # 0.5 s resampled to 16 kHz


def test_background_noise_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        A.BackgroundNoise([])
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError):
        A.BackgroundNoise([bad])(_tone(), SR, 0)


def test_transforms_do_not_modify_input_in_place() -> None:
    y = _tone()
    before = y.copy()
    for t in (A.Gain(), A.TimeShift(), A.AddNoise(), A.AddNoise(color="pink")):
        t(y, SR, 0)
    np.testing.assert_array_equal(y, before)


@pytest.mark.parametrize(("cls", "kwargs"), [
    (A.Gain, {"min_db": 3, "max_db": -3}), (A.Gain, {"p": 1.5}), (A.TimeShift, {"max_fraction": 2.0}),
    (A.AddNoise, {"color": "brown"}), (A.AddNoise, {"min_snr_db": 30, "max_snr_db": 3}),
    (A.Mixup, {"alpha": 0.0}), (A.Mixup, {"rule": "or"}), (A.Mixup, {"p": -0.1}),
])
def test_invalid_arguments_raise_value_error(cls, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_rng_must_be_generator_or_seed() -> None:
    with pytest.raises(TypeError, match="rng"):
        A.Gain()(_tone(), SR, None)


# ----------------------------------------------------------------------------- Compose / OneOf
def _pipeline() -> A.Compose:
    return A.Compose([
        A.Gain(-6, 6, p=0.5),
        A.OneOf([A.AddNoise(10, 20, color="pink"), A.TimeShift(0.3)], weights=[1, 3], p=0.8),
    ])


def test_compose_is_reproducible_per_seed() -> None:
    y = _tone()
    aug = _pipeline()
    a = aug(y, SR, np.random.default_rng(7))
    b = aug(y, SR, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    outs = [aug(y, SR, seed) for seed in range(8)]
    assert len({o.tobytes() for o in outs}) > 1  # different seeds -> different outputs


def test_probability_zero_is_identity_and_p_is_respected() -> None:
    y = _tone()
    assert A.Compose([A.Gain(), A.AddNoise()], p=0.0)(y, SR, 0) is y
    applied = sum(not np.array_equal(A.Gain(p=0.3)(y, SR, s), y) for s in range(400))
    assert 90 <= applied <= 150  # ~120 expected


def test_one_of_applies_exactly_one_with_weights() -> None:
    y = np.ones(100, np.float32)
    only_first = A.OneOf([A.Gain(6, 6, p=0.0), A.Gain(-6, -6)], weights=[1, 0])
    np.testing.assert_allclose(only_first(y, SR, 0), 10 ** (6 / 20), rtol=1e-6)  # child p is ignored
    pick = A.OneOf([A.Gain(6, 6), A.Gain(-6, -6)], weights=[3, 1])
    up = sum(pick(y, SR, s)[0] > 1 for s in range(400))
    assert 270 <= up <= 330  # ~300 expected
    with pytest.raises(ValueError, match="weights"):
        A.OneOf([A.Gain()], weights=[1, 2])
    with pytest.raises(ValueError, match="at least one"):
        A.OneOf([])


def test_repr_is_readable() -> None:
    text = repr(A.Compose([_pipeline(), A.BackgroundNoise(["/x/rain.ogg"], p=0.2)], p=0.9))
    assert text == (
        "Compose([\n"
        "  Compose([\n"
        "    Gain(min_db=-6.0, max_db=6.0, p=0.5),\n"
        "    OneOf([\n"
        "      AddNoise(min_snr_db=10.0, max_snr_db=20.0, color='pink', p=1.0),\n"
        "      TimeShift(max_fraction=0.3, rollover=True, p=1.0),\n"
        "    ], weights=[0.25, 0.75], p=0.8),\n"
        "  ], p=1.0),\n"
        "  BackgroundNoise(files=['rain.ogg'], min_snr_db=0.0, max_snr_db=20.0, p=0.2),\n"
        "], p=0.9)"
    )


# ----------------------------------------------------------------------------- mixup
def test_mix_labels_rules_numpy_and_torch() -> None:
    t1, t2 = np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 1.0])
    np.testing.assert_allclose(A.mix_labels(t1, t2, 0.7), [0.7, 0.3, 0.65])
    np.testing.assert_allclose(A.mix_labels(t1, t2, 0.7, rule="max"), [1.0, 1.0, 1.0])
    got = A.mix_labels(torch.tensor(t1), torch.tensor(t2), 0.25, rule="weighted")
    torch.testing.assert_close(got, torch.tensor([0.25, 0.75, 0.875], dtype=torch.float64))
    with pytest.raises(ValueError, match="rule"):
        A.mix_labels(t1, t2, 0.5, rule="or")


def _batch(b: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    waves = torch.arange(1, b + 1, dtype=torch.float32)[:, None].repeat(1, 50)  # example i is the constant i+1
    targets = torch.eye(b)  # one class per example
    weights = torch.linspace(0.1, 0.8, b)
    return waves, targets, weights


def test_mixup_weighted_rule_mixes_waves_targets_and_weights_consistently() -> None:
    waves, targets, weights = _batch()
    w, t, s = A.Mixup(alpha=0.4, p=1.0)(waves, targets, weights, generator=torch.Generator().manual_seed(0))
    values = torch.arange(1, 9, dtype=torch.float32)
    torch.testing.assert_close(w[:, 0], t @ values)  # wave = sum_j target_j * wave_j
    torch.testing.assert_close(t.sum(1), torch.ones(8))
    torch.testing.assert_close(s, t @ weights)  # weights follow the same convex mix
    assert (t.max(1).values < 1).any()  # something was actually mixed


def test_mixup_max_rule_is_or_of_the_pair() -> None:
    waves, targets, weights = _batch()
    w, t, s = A.Mixup(alpha=0.4, p=1.0, rule="max")(waves, targets, weights, torch.Generator().manual_seed(0))
    assert set(t.unique().tolist()) <= {0.0, 1.0}
    for i in range(8):
        pair = t[i].nonzero().flatten().tolist()
        assert i in pair
        assert len(pair) <= 2
        # the wave lies between the two source constants, the weight is the larger of the two
        lo, hi = min(pair) + 1, max(pair) + 1
        assert lo - 1e-5 <= w[i, 0].item() <= hi + 1e-5
        assert s[i].item() == pytest.approx(weights[pair].max().item())


def test_mixup_reproducible_and_identity_when_off() -> None:
    waves, targets, weights = _batch()
    mix = A.Mixup(p=1.0)
    a = mix(waves, targets, weights, torch.Generator().manual_seed(1))
    b = mix(waves, targets, weights, torch.Generator().manual_seed(1))
    c = mix(waves, targets, weights, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    mix.eval()
    out = mix(waves, targets, weights)
    assert out[0] is waves
    assert out[1] is targets
    assert out[2] is weights
    w, t, s = A.Mixup(p=0.0)(waves, targets, None)
    assert w is waves
    assert s is None
    assert repr(A.Mixup(alpha=0.2, p=0.5, rule="max")) == "Mixup(alpha=0.2, p=0.5, rule='max')"
