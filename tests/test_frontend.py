"""Tests for nfaudio.frontend: LogMel against librosa, ONNX export, the matmul STFT, SpecAugment."""

from __future__ import annotations

import io

import librosa
import numpy as np
import pytest
import torch

from nfaudio.frontend import LogMel, SpecAugment


def _signal(sr: int, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Chirp + tone + noise, with a first quarter 60 dB quieter (float64, > 100 dB of mel range)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    y = 0.3 * np.sin(2 * np.pi * (300 + 2000 * t) * t) + 0.2 * np.sin(2 * np.pi * 1234 * t)
    y = y + 0.05 * rng.standard_normal(t.shape)
    y[: len(y) // 4] *= 1e-3
    return y


def _librosa_db(y: np.ndarray, fe: LogMel) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=y, sr=fe.sample_rate, n_fft=fe.n_fft, hop_length=fe.hop_length, win_length=fe.win_length,
        window="hann", center=fe.center, pad_mode=fe.pad_mode, power=fe.power, n_mels=fe.n_mels,
        fmin=fe.fmin, fmax=fe.fmax, htk=False, norm="slaney",
    )
    return librosa.power_to_db(mel, ref=fe.ref, amin=fe.amin, top_db=fe.top_db)


CONFIGS = [
    {},  # BirdCLEF defaults: 32 kHz, n_fft 2048, hop 512, 128 mels, 20-16000 Hz, power 2, top_db 80
    {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "win_length": 400, "n_mels": 64,
     "fmin": 50.0, "fmax": 7600.0, "power": 1.0},
    {"sample_rate": 22050, "n_fft": 1024, "hop_length": 256, "n_mels": 80, "fmin": 0.0, "fmax": 11025.0,
     "top_db": None, "center": False},
    {"sample_rate": 32000, "n_fft": 1024, "hop_length": 320, "n_mels": 64, "fmin": 300.0, "fmax": 12000.0,
     "top_db": None, "pad_mode": "reflect"},
    {"sample_rate": 32000, "n_fft": 2048, "hop_length": 512, "win_length": 1600, "n_mels": 128,
     "power": 1.0, "top_db": None},
    {"sample_rate": 16000, "n_fft": 400, "hop_length": 100, "n_mels": 40, "fmin": 0.0, "fmax": None,
     "top_db": 60.0, "pad_mode": "edge"},
]


@pytest.mark.parametrize("stft", ["fft", "conv"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_logmel_matches_librosa_float64_reference(cfg: dict, stft: str) -> None:
    fe = LogMel(**cfg, stft=stft)
    y = _signal(fe.sample_rate)
    ref = _librosa_db(y, fe)  # float64 reference
    out = fe(torch.tensor(y, dtype=torch.float32)[None])  # float32 compute
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (1, 1, fe.n_mels, fe.n_frames(len(y))) == (1, 1, *ref.shape)
    np.testing.assert_allclose(out[0, 0].double().numpy(), ref, rtol=0, atol=1e-3)


def test_top_db_clamps_per_example_and_batch_matches_single_clips() -> None:
    fe = LogMel(sample_rate=16000, n_fft=512, hop_length=128, n_mels=32, fmax=8000.0, amin=1e-20)
    silence = np.zeros(8000)  # -200 dB: below every clip's own floor
    loud = np.concatenate([_signal(16000, 0.5, seed=1), silence])  # > 80 dB of range: the clamp is active
    quiet = 1e-4 * np.concatenate([_signal(16000, 0.5, seed=2), silence])  # 80 dB quieter than loud
    batch = fe(torch.tensor(np.stack([loud, quiet]), dtype=torch.float32))
    for i, y in enumerate((loud, quiet)):
        np.testing.assert_allclose(batch[i, 0].double().numpy(), _librosa_db(y, fe), atol=1e-3)
        assert (batch[i].max() - batch[i].min()).item() == pytest.approx(80.0, abs=1e-3)
    assert batch[1].min() < batch[0].min() - 70  # a batch-wide floor would have clipped the quiet clip


def test_cpu_chunking_gives_identical_values() -> None:
    fe = LogMel(sample_rate=16000, n_fft=256, hop_length=64, n_mels=16, fmax=8000.0)
    x = torch.randn(5, 4000)
    whole = fe(x)
    fe.CPU_CHUNK_SAMPLES = 8000  # two examples per chunk -> three chunks
    torch.testing.assert_close(fe(x), whole, rtol=0, atol=0)


def test_fft_and_conv_stft_agree_and_gradient_flows() -> None:
    x = torch.randn(3, 8000, requires_grad=True)
    a = LogMel(sample_rate=16000, n_fft=512, hop_length=160, n_mels=40, fmax=8000.0)(x)
    b = LogMel(sample_rate=16000, n_fft=512, hop_length=160, n_mels=40, fmax=8000.0, stft="conv")(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
    a.sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(("center", "n", "expected"), [(True, 160000, 313), (True, 511, 1), (False, 2048, 1),
                                                       (False, 160000, 309)])
def test_n_frames_matches_output(center: bool, n: int, expected: int) -> None:
    fe = LogMel(center=center)
    assert fe.n_frames(n) == expected
    assert fe(torch.zeros(2, n)).shape == (2, 1, 128, expected)


def test_silence_is_floor_and_finite() -> None:
    out = LogMel()(torch.zeros(2, 32000))
    assert torch.all(out == -100.0)  # 10 * log10(amin)


def test_normalize_per_clip_and_fixed() -> None:
    x = torch.tensor(np.stack([_signal(32000, 0.5, 3), 0.01 * _signal(32000, 0.5, 4)]), dtype=torch.float32)
    raw = LogMel()(x)
    per_clip = LogMel(normalize="per_clip")(x)
    for i in range(2):
        assert per_clip[i].mean().item() == pytest.approx(0.0, abs=1e-4)
        assert per_clip[i].std().item() == pytest.approx(1.0, abs=1e-4)
    fixed = LogMel(normalize="fixed", mean=-40.0, std=20.0)(x)
    torch.testing.assert_close(fixed, (raw + 40.0) / 20.0)


@pytest.mark.parametrize("kwargs", [
    {"fmax": 16001.0}, {"sample_rate": 16000}, {"n_mels": 0}, {"normalize": "batch"}, {"win_length": 4096},
    {"hop_length": 0}, {"power": 0.0}, {"top_db": -1.0}, {"fmin": 17000.0}, {"pad_mode": "wrap"},
    {"stft": "dft"}, {"normalize": "fixed", "std": 0.0}, {"amin": 0.0},
])
def test_logmel_invalid_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LogMel(**kwargs)


def test_logmel_bad_input_raises_value_error() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        LogMel()(torch.zeros(32000))
    with pytest.raises(ValueError, match="n_fft"):
        LogMel(center=False)(torch.zeros(1, 1000))


def test_logmel_buffers_and_repr() -> None:
    fe = LogMel(sample_rate=16000, n_fft=512, win_length=400, n_mels=40, fmax=8000.0, normalize="fixed",
                mean=-30.0, std=12.0)
    assert set(fe.state_dict()) == {"window", "mel_fb"}
    expected = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=20.0, fmax=8000.0, htk=False, norm="slaney")
    np.testing.assert_allclose(fe.mel_fb.numpy(), expected, rtol=1e-6)
    assert fe.window.shape == (512,)
    assert fe.window[:56].abs().max() == 0
    text = repr(fe)
    for part in ("sample_rate=16000", "n_fft=512", "win_length=400", "n_mels=40", "normalize='fixed'",
                 "mean=-30.0", "std=12.0", "stft='fft'"):
        assert part in text


@pytest.mark.parametrize("stft", ["fft", "conv"])
def test_onnx_export_dynamic_batch_matches_torch(stft: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    fe = LogMel(stft=stft) if stft == "fft" else LogMel(16000, n_fft=512, hop_length=160, n_mels=64, fmax=8000.0,
                                                         stft=stft, normalize="per_clip")
    n = fe.sample_rate // 2
    buf = io.BytesIO()
    torch.onnx.export(fe, (torch.randn(2, n),), buf, input_names=["wave"], output_names=["logmel"],
                      dynamic_axes={"wave": {0: "batch"}, "logmel": {0: "batch"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.tensor(np.stack([_signal(fe.sample_rate, 0.5, s) * g for s, g in ((5, 1.0), (6, 0.1), (7, 1e-3))]),
                     dtype=torch.float32)
    got = session.run(None, {"wave": x.numpy()})[0]
    want = fe(x).numpy()
    assert got.shape == want.shape == (3, 1, fe.n_mels, fe.n_frames(n))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


@pytest.mark.gpu
def test_logmel_runs_on_input_device() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fe = LogMel()
    x = torch.tensor(np.stack([_signal(32000, 1.0, 8), _signal(32000, 1.0, 9)]), dtype=torch.float32)
    cpu = fe(x)
    gpu = fe.cuda()(x.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-3)


# ----------------------------------------------------------------------------- the matmul (ONNX-friendly) STFT
@pytest.mark.parametrize("kwargs", [
    dict(n_fft=512, hop_length=128),  # hop divides n_fft: frames by reshaping
    dict(n_fft=400, hop_length=160, pad_mode="reflect", power=1.0, normalize="per_clip"),  # frames by gather
    dict(n_fft=256, hop_length=64, top_db=None, center=False, normalize="fixed", mean=-20.0, std=10.0),
])
def test_matmul_frontend_matches_logmel(kwargs: dict) -> None:
    fe = LogMel(sample_rate=16000, n_mels=40, fmax=8000.0, **kwargs)
    wave = torch.randn(3, 9000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        ref, got = fe(wave), fe.with_stft("matmul")(wave)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-3


# ----------------------------------------------------------------------------- SpecAugment
def _spec(b: int = 4, f: int = 64, t: int = 100) -> torch.Tensor:
    return torch.rand(b, 1, f, t, generator=torch.Generator().manual_seed(0)) + 1.0  # values in [1, 2)


def test_specaugment_identity_in_eval_mode() -> None:
    aug = SpecAugment().eval()
    x = _spec()
    assert aug(x) is x


def test_specaugment_masks_full_bands_with_example_minimum() -> None:
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=20,
                      generator=torch.Generator().manual_seed(1))
    x = _spec()
    x[:, :, 0, 0] = 0.0  # a unique minimum per example, kept out of the structural check below
    y = aug(x)
    assert y.shape == x.shape
    changed = y != x  # (B, 1, F, T)
    assert changed.any()
    for i in range(x.shape[0]):
        assert torch.all(y[i][changed[i]] == 0.0)  # filled with the example's minimum
        m = changed[i, 0, 1:, 1:]
        freq_rows = m.all(dim=1)  # fully masked mel bins
        time_cols = m.all(dim=0)  # fully masked frames
        # every changed cell lies in a fully masked row or column, and the masks respect the widths
        assert torch.equal(m, freq_rows[:, None] | time_cols[None, :])
        assert freq_rows.sum() <= 2 * 10
        assert time_cols.sum() <= 2 * 20


def test_specaugment_reproducible_with_generator() -> None:
    x = _spec()
    a = SpecAugment()(x, generator=torch.Generator().manual_seed(3))
    b = SpecAugment()(x, generator=torch.Generator().manual_seed(3))
    c = SpecAugment()(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_specaugment_p_zero_and_fill_mean() -> None:
    x = _spec()
    assert torch.equal(SpecAugment(p=0.0)(x), x)
    y = SpecAugment(time_masks=0, freq_masks=1, freq_width=64, fill="mean",
                    generator=torch.Generator().manual_seed(0))(x)
    means = x.mean(dim=(1, 2, 3))
    for i in range(x.shape[0]):
        changed = y[i] != x[i]
        assert torch.allclose(y[i][changed], means[i].expand(int(changed.sum())))


@pytest.mark.parametrize("kwargs", [{"freq_masks": -1}, {"time_width": -1}, {"p": 1.5}, {"fill": "zero"}])
def test_specaugment_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SpecAugment(**kwargs)


def test_specaugment_repr() -> None:
    assert repr(SpecAugment(freq_masks=1, time_width=8, p=0.5)) == (
        "SpecAugment(freq_masks=1, freq_width=16, time_masks=2, time_width=8, p=0.5, fill='min')")
