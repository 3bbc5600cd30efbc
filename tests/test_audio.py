"""Tests for nfaudio.audio: decode every format, down-mix, resample, crop/pad, window, stream, bad files."""

from __future__ import annotations

import pickle

import librosa
import numpy as np
import pytest
import soundfile as sf

from nfaudio import audio
from nfaudio.audio import AudioError

# (suffix, soundfile format, subtype, sample rate, lossless)
FORMATS = [
    ("wav", "WAV", "PCM_16", 32000, True),
    ("wav", "WAV", "FLOAT", 44100, True),
    ("flac", "FLAC", "PCM_16", 22050, True),
    ("flac", "FLAC", "PCM_24", 48000, True),
    ("ogg", "OGG", "VORBIS", 32000, False),
    ("ogg", "OGG", "OPUS", 48000, False),
    ("opus", "OGG", "OPUS", 16000, False),
    ("mp3", "MP3", "MPEG_LAYER_III", 44100, False),
]
FORMAT_IDS = [f"{s}-{st}-{r}" for s, _, st, r, _ in FORMATS]


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(sr: int, seconds: float, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amp * rng.uniform(-1, 1, int(round(seconds * sr)))).astype(np.float32)


def chirp(sr: int, seconds: float, f0: float = 200.0, f1: float = 3000.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))).astype(np.float32)


def write(path, y, sr, fmt=None, subtype=None):
    """Write (T,) or (C, T) audio; returns the path as str."""
    y = np.asarray(y)
    sf.write(str(path), y.T if y.ndim == 2 else y, sr, format=fmt, subtype=subtype)
    return str(path)


def peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)])


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


# ----------------------------------------------------------------------------- formats / info
@pytest.mark.parametrize(("suffix", "fmt", "subtype", "sr", "lossless"), FORMATS, ids=FORMAT_IDS)
def test_load_every_format(tmp_path, suffix, fmt, subtype, sr, lossless):
    y = sine(1000.0, sr, 1.0)
    path = write(tmp_path / f"a.{suffix}", y, sr, fmt, subtype)
    x, out_sr = audio.load(path)
    assert out_sr == sr
    assert x.dtype == np.float32
    assert x.ndim == 1
    if lossless:
        assert len(x) == len(y)
        np.testing.assert_allclose(x, y, atol=1.0 / 2**15)
    else:  # lossy codecs: same length (give or take codec padding), same tone and level
        assert abs(len(x) - len(y)) <= 2304
        assert peak_hz(x, sr) == pytest.approx(1000.0, abs=5.0)
        assert rms(x) == pytest.approx(rms(y), rel=0.1)


@pytest.mark.parametrize(("suffix", "fmt", "subtype", "sr", "lossless"), FORMATS, ids=FORMAT_IDS)
def test_info_matches_load_without_decoding(tmp_path, monkeypatch, suffix, fmt, subtype, sr, lossless):
    y = np.stack([sine(440.0, sr, 0.5), noise(sr, 0.5)])
    path = write(tmp_path / f"a.{suffix}", y, sr, fmt, subtype)
    x, _ = audio.load(path, mono=False)

    def no_decode(*args, **kwargs):
        raise AssertionError("info() must not decode samples")

    monkeypatch.setattr(sf.SoundFile, "read", no_decode)
    meta = audio.info(path)
    assert meta == audio.AudioInfo(
        path=path, sample_rate=sr, channels=2, frames=x.shape[1], duration=x.shape[1] / sr,
        format=fmt, subtype=subtype,
    )


def test_audio_extensions():
    assert audio.AUDIO_EXTENSIONS == (".wav", ".flac", ".ogg", ".opus", ".mp3")


# ----------------------------------------------------------------------------- mono / rates
def test_stereo_downmix_is_channel_mean(tmp_path):
    sr = 16000
    y = np.stack([sine(300.0, sr, 0.5), noise(sr, 0.5)])
    path = write(tmp_path / "st.wav", y, sr, subtype="FLOAT")
    stereo, _ = audio.load(path, mono=False)
    mono, _ = audio.load(path)
    assert stereo.shape == (2, len(y[0]))
    np.testing.assert_array_equal(stereo, y)
    np.testing.assert_allclose(mono, y.mean(axis=0), atol=1e-7)
    np.testing.assert_allclose(audio.to_mono(y), y.mean(axis=0), atol=1e-7)
    first = y[0]
    assert audio.to_mono(first) is first


@pytest.mark.parametrize("sr", [8000, 11025, 16000, 22050, 44100, 48000, 96000])
def test_sample_rates_load_and_resample(tmp_path, sr):
    y = sine(1000.0, sr, 0.5)
    path = write(tmp_path / "a.wav", y, sr, subtype="FLOAT")
    x, out_sr = audio.load(path, sr=32000)
    assert out_sr == 32000
    assert len(x) == round(len(y) * 32000 / sr)
    assert peak_hz(x, 32000) == pytest.approx(1000.0, abs=4.0)
    assert audio.info(path).sample_rate == sr


def test_resample_accuracy_1khz_48k_to_32k():
    y = sine(1000.0, 48000, 1.0) + 0.0
    x = audio.resample(y, 48000, 32000)
    assert x.dtype == np.float32
    assert len(x) == round(len(y) * 32000 / 48000)
    assert peak_hz(x, 32000) == pytest.approx(1000.0, abs=1.0)
    assert rms(x[1000:-1000]) == pytest.approx(rms(y), rel=1e-3)
    np.testing.assert_allclose(x, librosa.resample(y, orig_sr=48000, target_sr=32000, res_type="soxr_hq"))


def test_resample_multichannel_and_identity():
    y = np.stack([sine(500.0, 16000, 0.3), sine(700.0, 16000, 0.3)])
    x = audio.resample(y, 16000, 44100)
    assert x.shape == (2, round(y.shape[1] * 44100 / 16000))
    np.testing.assert_allclose(x[1], audio.resample(y[1], 16000, 44100), atol=1e-6)
    np.testing.assert_array_equal(audio.resample(y, 16000, 16000), y)
    with pytest.raises(ValueError):
        audio.resample(y, 0, 16000)


# ----------------------------------------------------------------------------- offset / duration
@pytest.mark.parametrize(("suffix", "subtype"), [("wav", "PCM_16"), ("wav", "FLOAT"), ("flac", "PCM_24")])
def test_offset_duration_equals_slice_and_seeks(tmp_path, monkeypatch, suffix, subtype):
    sr = 16000
    y = np.stack([noise(sr, 3.0, seed=1), noise(sr, 3.0, seed=2)])
    path = write(tmp_path / f"a.{suffix}", y, sr, subtype=subtype)
    full, _ = audio.load(path)
    requested = []
    real_read = sf.SoundFile.read

    def spy_read(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy_read)
    seg, _ = audio.load(path, offset=1.25, duration=0.5)
    assert requested == [8000]  # only the segment is decoded
    np.testing.assert_array_equal(seg, full[20000:28000])
    tail, _ = audio.load(path, offset=2.5)
    np.testing.assert_array_equal(tail, full[40000:])
    past_end, _ = audio.load(path, offset=2.75, duration=1.0)  # runs past the end: returned short
    np.testing.assert_array_equal(past_end, full[44000:])
    seg32, sr32 = audio.load(path, sr=32000, offset=1.0, duration=0.5)
    assert (sr32, len(seg32)) == (32000, 16000)
    np.testing.assert_allclose(seg32, audio.resample(full[16000:24000], sr, 32000), atol=1e-6)


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype", "atol"),
    [("ogg", "OGG", "VORBIS", 1e-6), ("opus", "OGG", "OPUS", 1e-6), ("mp3", "MP3", "MPEG_LAYER_III", 1e-5)],
)
def test_offset_duration_lossy_matches_full_decode(tmp_path, suffix, fmt, subtype, atol):
    # MP3 guards against libsndfile 1.2's MP3 seek (mpg123 restarts without its bit reservoir)
    sr = 32000 if suffix != "opus" else 48000
    path = write(tmp_path / f"a.{suffix}", chirp(sr, 3.0), sr, fmt, subtype)  # tonal: MP3 uses its reservoir
    full, _ = audio.load(path)
    for offset, duration in ((0.0, 0.5), (1.3, 0.7), (2.1, 0.4)):
        seg, _ = audio.load(path, offset=offset, duration=duration)
        a = round(offset * sr)
        np.testing.assert_allclose(seg, full[a : a + round(duration * sr)], atol=atol)


def test_load_rejects_bad_arguments(tmp_path):
    path = write(tmp_path / "a.wav", sine(440.0, 8000, 0.2), 8000)
    for kwargs in ({"offset": -1.0}, {"duration": -0.5}, {"sr": 0}, {"dtype": "int16"}):
        with pytest.raises(ValueError):
            audio.load(path, **kwargs)
    x, _ = audio.load(path, dtype="float64")
    assert x.dtype == np.float64


# ----------------------------------------------------------------------------- crop / pad
def test_fix_length_zero_and_repeat():
    y = np.arange(1, 6, dtype=np.float32)  # [1 2 3 4 5]
    np.testing.assert_array_equal(audio.fix_length(y, 3), [1, 2, 3])
    np.testing.assert_array_equal(audio.fix_length(y, 3, start=1), [2, 3, 4])
    np.testing.assert_array_equal(audio.fix_length(y, 8), [1, 2, 3, 4, 5, 0, 0, 0])
    np.testing.assert_array_equal(audio.fix_length(y, 12, mode="repeat"), [1, 2, 3, 4, 5] * 2 + [1, 2])
    np.testing.assert_array_equal(audio.fix_length(y, 5, mode="repeat", start=3), [4, 5, 4, 5, 4])
    np.testing.assert_array_equal(audio.fix_length(y, 3, start=9), [0, 0, 0])
    y2 = np.stack([y, -y])
    out = audio.fix_length(y2, 7, mode="repeat")
    assert out.shape == (2, 7)
    np.testing.assert_array_equal(out[1], -np.array([1, 2, 3, 4, 5, 1, 2]))
    with pytest.raises(ValueError):
        audio.fix_length(y, 3, mode="reflect")


def test_random_crop_reproducible_and_in_bounds():
    y = np.arange(1000, dtype=np.float32)
    crops = [audio.random_crop(y, 100, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(crops[0], crops[1])
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        c = audio.random_crop(y, 100, rng)
        assert c.shape == (100,)
        assert 0 <= c[0] <= 900
        np.testing.assert_array_equal(c, y[int(c[0]) : int(c[0]) + 100])  # a contiguous slice
        starts.add(int(c[0]))
    assert len(starts) > 10
    short = audio.random_crop(y[:30], 50, rng, pad_mode="repeat")
    np.testing.assert_array_equal(short, np.concatenate([y[:30], y[:20]]))
    np.testing.assert_array_equal(audio.random_crop(y[:30], 50, rng)[30:], 0)


def test_center_crop():
    y = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(audio.center_crop(y, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(audio.center_crop(y, 12), list(range(10)) + [0, 0])


def _slice_start(full: np.ndarray, crop: np.ndarray) -> int:
    """Where ``crop`` lies in ``full``: the one start whose slice equals it (fails when there is none)."""
    starts = [s for s in np.flatnonzero(full[: len(full) - len(crop) + 1] == crop[0])
              if np.array_equal(full[s : s + len(crop)], crop)]
    assert len(starts) == 1, "the crop is not one slice of the full load"
    return int(starts[0])


def test_read_crop_is_a_slice_of_the_full_load(tmp_path, monkeypatch):
    sr = 8000
    path = write(tmp_path / "long.wav", noise(sr, 3.0, seed=6), sr, subtype="FLOAT")
    full, _ = audio.load(path)
    offsets = []
    real_load = audio.windows.load

    def spy(*args, **kwargs):
        offsets.append(kwargs.get("offset"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(audio.windows, "load", spy)
    np.testing.assert_array_equal(audio.read_crop(path, sr, 1.0, "start"), full[:sr])
    np.testing.assert_array_equal(audio.read_crop(path, sr, 1.0, "center"), full[sr : 2 * sr])
    starts = set()
    for seed in range(8):
        crop = audio.read_crop(path, sr, 1.0, "random", rng=np.random.default_rng(seed))
        assert crop.shape == (sr,)
        assert crop.dtype == np.float32
        np.testing.assert_array_equal(crop, audio.read_crop(path, sr, 1.0, "random", rng=np.random.default_rng(seed)))
        starts.add(_slice_start(full, crop))
    assert len(starts) > 4  # the start is drawn, not fixed
    assert all(o is not None for o in offsets)  # a long file is read partially, never whole
    with pytest.raises(ValueError, match="a random crop needs rng"):
        audio.read_crop(path, sr, 1.0, "random")
    with pytest.raises(ValueError, match="crop must be one of"):
        audio.read_crop(path, sr, 1.0, "middle")


def test_read_crop_of_a_short_file_is_zero_padded_at_the_end(tmp_path):
    sr = 8000
    path = write(tmp_path / "short.wav", noise(sr, 0.4, seed=7), sr, subtype="FLOAT")
    full, _ = audio.load(path)
    expected = np.concatenate([full, np.zeros(sr - len(full), np.float32)])
    for mode in ("start", "center", "random"):
        crop = audio.read_crop(path, sr, 1.0, mode, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(crop, expected)


def test_read_crop_resampled_start_and_center_match_a_resample_of_the_whole_file(tmp_path):
    sr, file_sr = 8000, 16000
    path = write(tmp_path / "hi.wav", noise(file_sr, 3.0, seed=8), file_sr, subtype="FLOAT")
    full, _ = audio.load(path, sr=sr)
    np.testing.assert_allclose(audio.read_crop(path, sr, 1.0, "start"), full[:sr], rtol=0, atol=1e-5)
    np.testing.assert_allclose(audio.read_crop(path, sr, 1.0, "center"), full[sr : 2 * sr], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize(
    ("n", "window", "hop", "last", "expected"),
    [
        (10, 4, 2, "pad", [0, 2, 4, 6]),  # 6 + 4 == 10 covers the end exactly
        (11, 4, 2, "pad", [0, 2, 4, 6, 8]),  # last one holds 3 samples + 1 pad
        (11, 4, 2, "drop", [0, 2, 4, 6]),
        (11, 4, 2, "shift", [0, 2, 4, 6, 7]),
        (12, 4, 4, "pad", [0, 4, 8]),  # exact multiple
        (12, 4, 4, "drop", [0, 4, 8]),
        (12, 4, 4, "shift", [0, 4, 8]),
        (13, 4, 4, "pad", [0, 4, 8, 12]),
        (13, 4, 4, "shift", [0, 4, 8, 9]),
        (3, 4, 2, "pad", [0]),  # shorter than one window
        (3, 4, 2, "drop", []),
        (3, 4, 2, "shift", [0]),
        (4, 4, 2, "pad", [0]),
        (4, 4, 2, "shift", [0]),
        (0, 4, 2, "pad", []),
        (10, 3, 5, "pad", [0, 5]),  # hop > window: gaps between windows
        (10, 3, 5, "drop", [0, 5]),
        (10, 3, 5, "shift", [0, 5, 7]),
        (60 * 32000, 5 * 32000, 5 * 32000, "pad", [k * 160000 for k in range(12)]),  # 60 s soundscape
    ],
)
def test_window_starts(n, window, hop, last, expected):
    starts = audio.window_starts(n, window, hop, last)
    assert starts.dtype == np.int64
    assert starts.tolist() == expected


def test_window_starts_validation():
    for args in ((10, 0, 2), (10, 4, 0), (-1, 4, 2)):
        with pytest.raises(ValueError):
            audio.window_starts(*args)
    with pytest.raises(ValueError):
        audio.window_starts(10, 4, 2, last="wrap")


def test_frame_windows_values():
    y = np.arange(1, 12, dtype=np.float32)  # 11 samples
    w = audio.frame_windows(y, 4, 2, last="pad")
    assert w.shape == (5, 4)
    np.testing.assert_array_equal(w[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(w[-1], [9, 10, 11, 0])
    np.testing.assert_array_equal(audio.frame_windows(y, 4, 2, last="shift")[-1], [8, 9, 10, 11])
    assert audio.frame_windows(y, 4, 2, last="drop").shape == (4, 4)
    assert audio.frame_windows(y[:2], 4, 2, last="drop").shape == (0, 4)
    with pytest.raises(ValueError):
        audio.frame_windows(np.zeros((2, 10)), 4, 2)


@pytest.mark.parametrize("last", ["pad", "drop", "shift"])
def test_stream_windows_equals_frame_windows(tmp_path, monkeypatch, last):
    sr = 16000
    y = np.stack([noise(sr, 7.3, seed=3), sine(300.0, sr, 7.3)])
    path = write(tmp_path / "long.flac", y, sr, subtype="PCM_24")
    block_s = 0.7  # ~11 blocks, not a multiple of the hop
    reads = []
    real_read = sf.SoundFile.read

    def spy_read(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return real_read(self, frames, *args, **kwargs)

    full, _ = audio.load(path)
    expected = audio.frame_windows(full, sr, sr // 2, last=last)
    monkeypatch.setattr(sf.SoundFile, "read", spy_read)
    got = list(audio.stream_windows(path, sr, window_s=1.0, hop_s=0.5, last=last, block_s=block_s))
    assert max(reads) == round(block_s * sr)  # never the whole file at once
    assert len(reads) >= 10
    assert len(got) == len(expected)
    np.testing.assert_array_equal(np.stack([w for _, _, w in got]), expected)
    starts = audio.window_starts(len(full), sr, sr // 2, last) / sr
    np.testing.assert_allclose([s for s, _, _ in got], starts)
    np.testing.assert_allclose([e for _, e, _ in got], starts + 1.0)


@pytest.mark.parametrize(("file_sr", "last"), [(48000, "pad"), (44100, "shift"), (22050, "drop")])
def test_stream_windows_with_resampling(tmp_path, file_sr, last):
    sr = 32000
    path = write(tmp_path / "long.wav", noise(file_sr, 6.2, seed=4), file_sr, subtype="FLOAT")
    full, _ = audio.load(path, sr=sr)
    expected = audio.frame_windows(full, int(1.5 * sr), sr, last=last)
    got = list(audio.stream_windows(path, sr, window_s=1.5, hop_s=1.0, last=last, block_s=0.45))
    assert len(got) == len(expected)
    windows = np.stack([w for _, _, w in got])
    assert windows.dtype == np.float32
    np.testing.assert_allclose(windows, expected, atol=1e-5)


@pytest.mark.parametrize(("suffix", "fmt", "subtype"), [("mp3", "MP3", None), ("ogg", "OGG", "VORBIS")])
def test_stream_windows_lossy_matches_full_decode(tmp_path, suffix, fmt, subtype):
    # reading MP3 block by block through soundfile used to corrupt ~500 samples after each block
    sr = 22050
    path = write(tmp_path / f"a.{suffix}", chirp(sr, 4.0), sr, fmt, subtype)
    full, _ = audio.load(path)
    got = np.stack([w for _, _, w in audio.stream_windows(path, sr, window_s=0.5, block_s=0.3)])
    np.testing.assert_allclose(got, audio.frame_windows(full, sr // 2, sr // 2), atol=1e-5)


def test_stream_windows_short_file_and_default_hop(tmp_path):
    sr = 8000
    path = write(tmp_path / "short.wav", sine(440.0, sr, 0.3), sr)
    (start, end, w), = list(audio.stream_windows(path, sr, window_s=1.0, block_s=0.1))
    assert (start, end) == (0.0, 1.0)
    full, _ = audio.load(path)
    np.testing.assert_array_equal(w[: len(full)], full)
    np.testing.assert_array_equal(w[len(full) :], 0)
    assert list(audio.stream_windows(path, sr, window_s=1.0, last="drop")) == []
    with pytest.raises(ValueError):  # arguments and file checked at the call, before iterating
        audio.stream_windows(path, sr, window_s=0.0)
    with pytest.raises(AudioError, match="not found"):
        audio.stream_windows(tmp_path / "missing.wav", sr, window_s=1.0)
    path2 = write(tmp_path / "two.wav", sine(440.0, sr, 2.0), sr)
    assert [s for s, _, _ in audio.stream_windows(path2, sr, window_s=0.5, block_s=0.3)] == [0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize("hop", [10, 5])
def test_shifted_windows_by_hand(hop):
    sr, window = 10, 10  # 1 s windows of 10 samples
    y = np.arange(1, 28, dtype=np.float32)  # 27 samples: the last window runs past the end
    starts = audio.window_starts(len(y), window, hop, "pad")
    frames = audio.frame_windows(y, window, hop, "pad")
    stream = iter([(s / sr, s / sr + 1.0, w) for s, w in zip(starts, frames)])
    shifts = (0, 3, -3, hop)
    got = list(audio.shifted_windows(stream, sr, shifts))
    assert [(s, e) for s, e, _ in got] == [(s / sr, s / sr + 1.0) for s in starts]
    # by hand: the signal with zeros before its start and past its end
    ext = np.concatenate([np.zeros(hop, np.float32), y, np.zeros(2 * window, np.float32)])
    for start, frame, (_, _, rows) in zip(starts, frames, got):
        assert rows.shape == (len(shifts), window)
        assert rows.dtype == np.float32
        np.testing.assert_array_equal(rows[0], frame)  # shift 0 is the window itself
        for row, k in zip(rows, shifts):
            np.testing.assert_array_equal(row, ext[hop + start + k : hop + start + k + window])
    np.testing.assert_array_equal(got[0][2][2], [0, 0, 0, *range(1, 8)])  # -3 at the start: zeros before it
    last = got[-1][2]  # starts at 20: samples 21..27, then zeros
    np.testing.assert_array_equal(last[1], [24, 25, 26, 27, 0, 0, 0, 0, 0, 0])  # +3: the next 3 samples
    assert list(audio.shifted_windows(iter([]), sr, shifts)) == []


# ----------------------------------------------------------------------------- bad files
def _bad_files(tmp_path):
    sr = 16000
    y = noise(sr, 1.0)
    wav = write(tmp_path / "good.wav", y, sr)
    flac = write(tmp_path / "good.flac", y, sr)
    out = {}
    out["zero-byte"] = tmp_path / "empty.wav"
    out["zero-byte"].write_bytes(b"")
    for name, src in (("truncated-wav", wav), ("truncated-flac", flac)):
        with open(src, "rb") as fh:
            data = fh.read()
        out[name] = tmp_path / f"cut_{name}{src[-5:]}"
        out[name].write_bytes(data[: len(data) // 2])
    out["text-as-wav"] = tmp_path / "notes.wav"
    out["text-as-wav"].write_text("this is not audio\n" * 20)
    out["missing"] = tmp_path / "nope.wav"
    bad = y.copy()
    bad[100] = np.nan
    out["nan-float-wav"] = tmp_path / "nan.wav"
    write(out["nan-float-wav"], bad, sr, subtype="FLOAT")
    bad[100] = np.inf
    out["inf-float-wav"] = tmp_path / "inf.wav"
    write(out["inf-float-wav"], bad, sr, subtype="FLOAT")
    out["directory"] = tmp_path / "dir.wav"
    out["directory"].mkdir()
    return out


BAD = ["zero-byte", "truncated-wav", "truncated-flac", "text-as-wav", "missing", "nan-float-wav",
       "inf-float-wav", "directory"]
# info() reads headers only: it cannot see a truncated FLAC stream or NaN samples
INFO_BAD = ["zero-byte", "truncated-wav", "text-as-wav", "missing", "directory"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_file_raises_audio_error(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(AudioError) as exc:
        audio.load(path)
    assert str(path) in str(exc.value)
    assert exc.value.path == str(path)
    assert exc.value.reason
    with pytest.raises(AudioError, match=str(path.name)):
        list(audio.stream_windows(path, 16000, window_s=0.25, block_s=0.1))
    if kind in INFO_BAD:
        with pytest.raises(AudioError, match=str(path.name)):
            audio.info(path)
    else:
        assert audio.info(path).frames > 0


def test_bad_file_reasons(tmp_path):
    files = _bad_files(tmp_path)
    reasons = {}
    for kind in ("zero-byte", "truncated-wav", "missing", "nan-float-wav", "text-as-wav"):
        with pytest.raises(AudioError) as exc:
            audio.load(files[kind])
        reasons[kind] = exc.value.reason
    assert "0 bytes" in reasons["zero-byte"]
    assert "truncated" in reasons["truncated-wav"]
    assert "not found" in reasons["missing"]
    assert "NaN" in reasons["nan-float-wav"]
    assert "not readable as audio" in reasons["text-as-wav"]


def test_audio_error_pickles():
    err = pickle.loads(pickle.dumps(AudioError("/x/a.wav", "empty file (0 bytes)")))
    assert (err.path, err.reason) == ("/x/a.wav", "empty file (0 bytes)")
    assert str(err) == "/x/a.wav: empty file (0 bytes)"


def test_truncated_mp3_short_read_is_fine(tmp_path):
    sr = 32000
    path = write(tmp_path / "a.mp3", sine(1000.0, sr, 3.0), sr, "MP3")
    data = (tmp_path / "a.mp3").read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    x, _ = audio.load(cut)
    assert 0 < len(x) < audio.info(path).frames
    assert np.isfinite(x).all()
    windows = np.stack([w for _, _, w in audio.stream_windows(cut, sr, window_s=0.5, block_s=0.4)])
    np.testing.assert_allclose(windows, audio.frame_windows(x, sr // 2, sr // 2), atol=1e-5)


def test_silence_is_valid(tmp_path):
    sr = 16000
    path = write(tmp_path / "silence.flac", np.zeros(sr, dtype=np.float32), sr)
    x, _ = audio.load(path, sr=32000)
    assert x.shape == (32000,)
    assert not x.any()
    assert audio.info(path).duration == pytest.approx(1.0)
    assert len(list(audio.stream_windows(path, sr, window_s=0.5))) == 2
