import multiprocessing as mp
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_recipe

from nfaudio import audio
from nfaudio.audio.cache import DecodedCache, cache_key
from nfaudio.training import fit
from nfaudio.training.distributed import World
from nfaudio.training.loader import EpochSampler


def _wav(path, seconds, sr=16000, seed=0):
    y = np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * sr)).astype(np.float32)
    sf.write(path, y, sr, subtype="FLOAT")
    return path


def test_key_changes_when_the_file_changes_and_the_entry_is_rebuilt(tmp_path):
    f = _wav(tmp_path / "a.wav", 2.0)
    cache = DecodedCache("disk", 16000, tmp_path / "cache")
    first = cache.entry_path(f)
    _, _, y = cache.get(f)
    assert first.is_file()
    assert np.array_equal(y, audio.load(f, sr=16000)[0])
    assert cache_key(f, 16000) != cache_key(f, 8000)
    _wav(f, 3.0, seed=1)  # new content, size and mtime
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.entry_path(f) != first
    _, frames, y2 = cache.get(f)
    assert frames == 48000
    assert np.array_equal(y2, audio.load(f, sr=16000)[0])
    assert cache.fill([f]) == 0  # already cached under the new key


def _fill(args):
    path, cache_dir = args
    cache = DecodedCache("disk", 16000, cache_dir)
    for _ in range(5):
        cache.entry_path(path).unlink(missing_ok=True)
        cache.get(path)
    return float(np.asarray(cache.get(path)[2]).sum())


def test_concurrent_writers_of_one_key_leave_a_whole_entry(tmp_path):
    f = _wav(tmp_path / "a.wav", 4.0)
    with mp.get_context("fork").Pool(2) as pool:
        sums = pool.map(_fill, [(str(f), str(tmp_path / "c"))] * 4)
    ref = audio.load(f, sr=16000)[0]
    assert sums == [pytest.approx(float(ref.sum()))] * 4
    entries = os.listdir(tmp_path / "c")
    assert entries == [DecodedCache("disk", 16000, tmp_path / "c").entry_path(f).name]  # no temporary left
    assert np.array_equal(DecodedCache("disk", 16000, tmp_path / "c").get(f)[2], ref)


@pytest.mark.parametrize("mode", ["memory", "disk"])
@pytest.mark.parametrize("seconds", [0.6, 3.3])
def test_cached_crops_equal_read_crop_without_resampling(tmp_path, mode, seconds):
    f = _wav(tmp_path / "a.wav", seconds)
    cache = DecodedCache(mode, 16000, tmp_path / "c")
    for crop in ("random", "start", "center"):
        for seed in range(4):
            a = audio.read_crop(f, 16000, 1.0, crop, np.random.default_rng(seed))
            b = cache.read_crop(f, 1.0, crop, np.random.default_rng(seed))
            assert b.dtype == np.float32
            assert np.array_equal(a, b), (crop, seed)


def test_cached_crops_with_resampling_match_read_crop_to_a_fraction_of_a_sample(tmp_path):
    # 32 kHz -> 16 kHz: start * sr / file_sr is whole for even starts, half a sample off for odd ones
    sr = 32000
    t = np.arange(int(3.0 * sr)) / sr
    sf.write(tmp_path / "a.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, subtype="FLOAT")
    cache = DecodedCache("disk", 16000, tmp_path / "c")
    for seed in range(6):
        a = audio.read_crop(tmp_path / "a.wav", 16000, 1.0, "random", np.random.default_rng(seed))
        b = cache.read_crop(tmp_path / "a.wav", 1.0, "random", np.random.default_rng(seed))
        assert a.shape == b.shape == (16000,)
        # half a 16 kHz sample moves a 0.5-amplitude 440 Hz tone by at most 0.5 * 2 pi 440 / 32000 = 0.0432
        # (a whole sample: 0.086)
        assert np.abs(a[100:-100] - b[100:-100]).max() < 0.0435


def test_epoch_sampler_matches_a_shuffling_dataloader():
    for epoch in (0, 3):
        gen = torch.Generator().manual_seed(5 * 1000 + epoch)
        expected = [int(i) for b in torch.utils.data.DataLoader(range(10), batch_size=10, shuffle=True,
                                                                 generator=gen) for i in b]
        s = EpochSampler(10, 5, World())
        s.set_epoch(epoch)
        assert [row for _, row in s] == expected
        assert {e for e, _ in s} == {epoch}


@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_training_with_a_cache_equals_training_without(tiny_birdclef, tmp_path, mode):
    from nfaudio.data import read_birdclef

    m = read_birdclef(tiny_birdclef.root)
    idx = np.arange(len(m))
    tr, va = m.subset(idx % 3 != 0), m.subset(idx % 3 == 0)
    runs = {}
    for cache in ("none", mode):
        cfg = tiny_recipe(tiny_birdclef.root, data={"num_workers": 1, "cache": cache, "cache_dir": str(tmp_path / "c")},
                          augment={"gain_p": 0.5}, train={"epochs": 2})
        fit(cfg, tr, va, tmp_path / cache)
        runs[cache] = torch.load(tmp_path / cache / "last.pt", weights_only=False)["model"]
    for key, value in runs["none"].items():
        assert torch.equal(value, runs[mode][key]), key
    if mode == "disk":
        assert len(list((tmp_path / "c").glob("*.npy"))) == len(m)
