"""Tests for nfaudio.data: targets, weights, AudioDataset, load_data and validate_manifest (the manifest
readers are tested in test_manifest.py)."""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_recipe, write_audio, write_csv
from torch.utils.data import DataLoader, WeightedRandomSampler

from nfaudio import audio
from nfaudio.config import from_dict
from nfaudio.data import (
    AudioDataset,
    Manifest,
    class_balanced_weights,
    encode_targets,
    load_data,
    make_sampler,
    rating_weights,
    read_birdclef,
    read_csv_manifest,
    validate_manifest,
)
from nfaudio.manifest import detect_kind

SR = 8000


def _add_one(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    assert isinstance(rng, np.random.Generator)
    return y + 1.0


# ------------------------------------------------------------------------------------------ targets / weights
def test_encode_targets_by_hand(birdclef_2023: Path) -> None:
    m = read_birdclef(birdclef_2023)  # classes [zebra1, abethr1, 1139490]
    expected = np.array([[0.5, 1, 0], [1, 0, 0], [0, 0, 1], [0.5, 1, 0]], dtype=np.float32)
    t = encode_targets(m)
    assert t.dtype == np.float32
    assert t.shape == (4, 3)
    np.testing.assert_array_equal(t, expected)
    np.testing.assert_array_equal(encode_targets(m, secondary_weight=0.0), (expected == 1).astype(np.float32))
    # smoothing t * (1 - ls) + ls / 2 with ls = 0.2: 1 -> 0.9, 0.3 -> 0.34, 0 -> 0.1
    t = encode_targets(m, secondary_weight=0.3, label_smoothing=0.2)
    np.testing.assert_allclose(t[0], [0.34, 0.9, 0.1], rtol=1e-6)
    np.testing.assert_allclose(t[1], [0.9, 0.1, 0.1], rtol=1e-6)
    # a label both primary and secondary stays 1; repeated secondaries stay at the secondary weight
    df = pd.DataFrame({"row_id": ["r"], "primary_label": ["b"], "secondary_labels": [["b", "a", "a"]]})
    np.testing.assert_array_equal(encode_targets(Manifest(df, ["a", "b"]), 0.5), [[0.5, 1.0]])
    with pytest.raises(ValueError, match="label_smoothing"):
        encode_targets(m, label_smoothing=1.5)


def test_rating_weights(birdclef_2023: Path) -> None:
    m = read_birdclef(birdclef_2023)  # ratings 4.0, 0.0, NaN, 2.5
    w = rating_weights(m.df)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [0.8, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(rating_weights(m, min_weight=0.6, zero_is_missing=False), [0.8, 0.6, 1.0, 0.6])
    np.testing.assert_array_equal(rating_weights(pd.DataFrame({"x": [1, 2]})), [1.0, 1.0])


def test_class_balanced_weights_and_sampler(tmp_path: Path) -> None:
    labels = ["a"] * 4 + ["b"] * 2 + ["c"]
    df = pd.DataFrame({"row_id": [str(i) for i in range(7)], "primary_label": labels})
    m = Manifest(df, ["a", "b", "c"])
    w = class_balanced_weights(m, alpha=0.5)
    np.testing.assert_allclose(w, [0.5] * 4 + [1 / math.sqrt(2)] * 2 + [1.0])
    np.testing.assert_allclose(class_balanced_weights(m, alpha=1.0), [0.25] * 4 + [0.5] * 2 + [1.0])
    np.testing.assert_array_equal(class_balanced_weights(m, alpha=0.0), np.ones(7))
    s = make_sampler(w)
    assert isinstance(s, WeightedRandomSampler)
    assert len(s) == 7
    assert s.replacement
    draw = [list(make_sampler(w, 50, torch.Generator().manual_seed(3))) for _ in range(2)]
    assert draw[0] == draw[1]
    assert len(draw[0]) == 50
    assert set(draw[0]) <= set(range(7))
    # alpha=1 draws each class about equally often
    idx = np.array(list(make_sampler(class_balanced_weights(m, 1.0), 6000, torch.Generator().manual_seed(0))))
    counts = np.bincount(np.array([0] * 4 + [1] * 2 + [2])[idx], minlength=3)
    assert np.all(np.abs(counts / 6000 - 1 / 3) < 0.03)
    with pytest.raises(ValueError, match="non-negative"):
        make_sampler([1.0, -1.0])


# ------------------------------------------------------------------------------------------ dataset
@pytest.fixture
def clips(tmp_path: Path) -> tuple[Manifest, dict[str, np.ndarray]]:
    """long (3 s), short (0.5 s) at 8 kHz and a 16 kHz file (1.5 s); CSV manifest with ratings."""
    raw = {"long.wav": write_audio(tmp_path / "long.wav", 3.0, seed=1),
           "short.wav": write_audio(tmp_path / "short.wav", 0.5, seed=2),
           "hi.wav": write_audio(tmp_path / "hi.wav", 1.5, sr=16000, seed=3)}
    csv = write_csv(tmp_path / "m.csv", [{"path": "long.wav", "label": "a;b", "rating": 2.5},
                                         {"path": "short.wav", "label": "b", "rating": 5.0},
                                         {"path": "hi.wav", "label": "c", "rating": None}])
    return read_csv_manifest(csv), raw


def test_dataset_eval_items(clips: tuple[Manifest, dict[str, np.ndarray]]) -> None:
    m, raw = clips
    ds = AudioDataset(m, sample_rate=SR, duration=1.0, train=False, transform=_add_one, use_rating=True)
    assert len(ds) == 3
    wave, target, weight, row_id = ds[0]
    assert wave.shape == (SR,)
    assert wave.dtype == torch.float32
    assert target.dtype == torch.float32
    assert target.tolist() == [1.0, 0.5, 0.0]
    assert weight.shape == ()
    assert weight.dtype == torch.float32
    assert weight.item() == pytest.approx(0.5)
    assert row_id == "long"
    full = audio.load(m.df["path"][0])[0]
    np.testing.assert_array_equal(wave.numpy(), full[:SR])  # start crop, transform not applied
    for i in range(3):
        assert torch.equal(ds[i][0], ds[i][0])
    short = ds[1][0].numpy()  # 0.5 s zero-padded to 1 s
    np.testing.assert_allclose(short[: SR // 2], raw["short.wav"], atol=1e-4)
    assert not short[SR // 2:].any()
    hi = ds[2][0]  # 16 kHz file resampled to 8 kHz, first second
    assert hi.shape == (SR,)
    assert torch.isfinite(hi).all()
    np.testing.assert_allclose(hi.numpy(), audio.load(m.df["path"][2], sr=SR)[0][:SR], atol=1e-4)
    centre = AudioDataset(m, sample_rate=SR, duration=1.0, crop="center")[0][0].numpy()
    np.testing.assert_array_equal(centre, full[SR: 2 * SR])


def test_dataset_train_determinism_and_transform(clips: tuple[Manifest, dict[str, np.ndarray]]) -> None:
    m, _ = clips
    ds = AudioDataset(m, sample_rate=SR, duration=1.0, train=True, seed=7)
    a, b = ds[0][0], ds[0][0]
    assert torch.equal(a, b)
    assert torch.equal(a, AudioDataset(m, sample_rate=SR, duration=1.0, train=True, seed=7)[0][0])
    ds.set_epoch(1)
    c = ds[0][0]
    assert not torch.equal(a, c)
    assert torch.equal(c, ds[0][0])
    ds.set_epoch(0)
    assert torch.equal(ds[0][0], a)
    assert not torch.equal(AudioDataset(m, sample_rate=SR, duration=1.0, train=True, seed=8)[0][0], a)
    with_tf = AudioDataset(m, sample_rate=SR, duration=1.0, train=True, seed=7, transform=_add_one)
    torch.testing.assert_close(with_tf[0][0], a + 1.0)
    with pytest.raises(ValueError, match="crop"):
        AudioDataset(m, crop="middle")


@pytest.mark.parametrize("ext", ["wav", "ogg"])
def test_dataset_partial_read_matches_full_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str) -> None:
    write_audio(tmp_path / f"long.{ext}", 3.0, seed=5)
    m = read_csv_manifest(write_csv(tmp_path / "m.csv", [{"path": f"long.{ext}", "label": "a"}]))
    path = m.df["path"][0]
    full = audio.load(path)[0]
    calls = []
    real_load = audio.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(audio.windows, "load", spy)  # read_crop, the one crop reader, decodes through it
    ds = AudioDataset(m, sample_rate=SR, duration=1.0, train=True, seed=3)
    for epoch in range(3):
        ds.set_epoch(epoch)
        wave = ds[0][0].numpy()
        kw = calls[-1]
        assert kw["duration"] == pytest.approx(1.0)  # only the crop is decoded
        start = int(round(kw["offset"] * SR))
        assert 0 <= start <= len(full) - SR
        np.testing.assert_array_equal(wave, full[start: start + SR])


def test_dataloader_workers_collate(clips: tuple[Manifest, dict[str, np.ndarray]]) -> None:
    m, _ = clips
    ds = AudioDataset(m, sample_rate=SR, duration=1.0, train=True, seed=1)
    clone = pickle.loads(pickle.dumps(ds))  # what a spawn/forkserver worker receives
    assert torch.equal(clone[0][0], ds[0][0])
    serial = list(DataLoader(ds, batch_size=2, num_workers=0))
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    waves, targets, weights, row_ids = batches[0]
    assert waves.shape == (2, SR)
    assert targets.shape == (2, 3)
    assert weights.shape == (2,)
    assert list(row_ids) == ["long", "short"]
    assert list(batches[1][3]) == ["hi"]
    for got, ref in zip(batches, serial):
        torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)  # same crops in workers


# ------------------------------------------------------------------------------------------ a recipe's data
def test_load_data_reads_a_generic_train_csv_as_detect_kind_says(tmp_path: Path) -> None:
    base = tmp_path / "ds"
    for name in ("clips/a.wav", "clips/b.wav"):
        write_audio(base / name, 0.1)
    train_csv = write_csv(base / "train.csv", [{"path": "clips/a.wav", "label": "dog"},
                                               {"path": "clips/b.wav", "label": "cat;dog"}])
    assert detect_kind(train_csv) == "csv"  # named like BirdCLEF metadata, but path,label columns
    got = load_data(from_dict({"data": {"manifest": str(train_csv), "validate": False, "num_workers": 0}}))
    expected = read_csv_manifest(train_csv)
    assert got.classes == expected.classes == ["cat", "dog"]
    pd.testing.assert_frame_equal(got.df, expected.df)
    assert got.df["row_id"].tolist() == ["clips/a", "clips/b"]


def test_load_data_accepts_a_birdclef_metadata_file(tiny_birdclef):
    by_root = load_data(tiny_recipe(tiny_birdclef.root, data={"metadata": "train_metadata.csv"}))
    by_file = load_data(tiny_recipe(None, data={"root": None,
                                                "manifest": str(tiny_birdclef.root / "train_metadata.csv")}))
    assert list(by_file.df["row_id"]) == list(by_root.df["row_id"])
    assert by_file.classes == by_root.classes


# ------------------------------------------------------------------------------------------ validation
def test_validate_manifest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_audio(tmp_path / "good.wav", 1.0)
    write_audio(tmp_path / "good2.ogg", 2.5)
    write_audio(tmp_path / "short.wav", 0.2)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    (tmp_path / "text.ogg").write_text("this is not audio")
    names = ["good.wav", "corrupt.wav", "gone.wav", "short.wav", "good2.ogg", "text.ogg"]
    csv = write_csv(tmp_path / "m.csv", [{"path": n, "label": "x"} for n in names])
    m = read_csv_manifest(csv, check_files=False)
    with caplog.at_level(logging.INFO, logger="nfaudio.data"):
        kept, bad = validate_manifest(m, min_duration=0.5, workers=2)
    assert "validated 6 files: 4 bad" in caplog.text
    assert len(kept) == 6
    assert kept is m
    assert list(bad.columns) == ["row_id", "path", "reason"]
    assert bad["row_id"].tolist() == ["corrupt", "gone", "short", "text"]
    assert bad["path"].tolist() == [str(tmp_path / n) for n in ("corrupt.wav", "gone.wav", "short.wav", "text.ogg")]
    reasons = dict(zip(bad["row_id"], bad["reason"]))
    assert reasons["gone"] == "missing"
    assert reasons["short"].startswith("too short: 0.200 s")
    assert reasons["corrupt"].startswith("unreadable:")
    assert reasons["text"].startswith("unreadable:")
    kept, bad2 = validate_manifest(m, sample_rate=16000, min_duration=0.5, workers=1, drop=True, full=True)
    assert kept.df["row_id"].tolist() == ["good", "good2"]
    assert kept.classes == ["x"]
    assert bad2["row_id"].tolist() == bad["row_id"].tolist()
    ok, none_bad = validate_manifest(kept)
    assert len(ok) == 2
    assert none_bad.empty
    assert list(none_bad.columns) == ["row_id", "path", "reason"]
