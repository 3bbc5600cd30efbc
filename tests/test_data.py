"""Tests for nfaudio.data: manifest readers, targets, weights, AudioDataset and validate_manifest."""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from nfaudio import audio, data
from nfaudio.data import (
    AudioDataset,
    Manifest,
    ManifestError,
    class_balanced_weights,
    encode_targets,
    load_manifest,
    make_sampler,
    rating_weights,
    read_birdclef,
    read_csv_manifest,
    read_folder,
    validate_manifest,
)

SR = 8000


def write_audio(path: Path, seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Write noise of ``seconds`` to ``path`` (format from the extension); return the samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    y = (0.1 * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))).astype(np.float32)
    sf.write(str(path), y, sr)
    return y


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _add_one(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    assert isinstance(rng, np.random.Generator)
    return y + 1.0


# ------------------------------------------------------------------------------------------ BirdCLEF
@pytest.fixture
def birdclef_2023(tmp_path: Path) -> Path:
    """2023/2025-style: label folders in `filename`, taxonomy.csv fixes a non-sorted class order."""
    root = tmp_path / "bc2023"
    rows = [
        ("abethr1", "['zebra1', 'unknown9']", "abethr1/XC1.ogg", 4.0, "Ann"),
        ("zebra1", "[]", "zebra1/XC2.ogg", 0.0, "Bob"),
        ("1139490", None, "1139490/iNat3.ogg", None, "Cy"),
        ("abethr1", "['abethr1', 'zebra1', 'zebra1']", "abethr1/XC4.ogg", 2.5, "Ann"),
    ]
    for i, (_, _, fname, _, _) in enumerate(rows):
        write_audio(root / "train_audio" / fname, 0.3, seed=i)
    write_csv(root / "train_metadata.csv", [
        {"primary_label": p, "secondary_labels": s, "filename": f, "rating": r, "author": a, "latitude": 1.5 * i}
        for i, (p, s, f, r, a) in enumerate(rows)])
    write_csv(root / "taxonomy.csv", [{"primary_label": c, "common_name": c.upper()}
                                      for c in ("zebra1", "abethr1", "1139490")])
    write_csv(root / "sample_submission.csv", [{"row_id": "s_5", "1139490": 0, "abethr1": 0, "zebra1": 0}])
    return root


def test_read_birdclef_2023_layout(birdclef_2023: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nfaudio.data"):
        m = read_birdclef(birdclef_2023)
    assert "unknown9" in caplog.text
    assert m.classes == ["zebra1", "abethr1", "1139490"]  # taxonomy.csv wins over sample_submission.csv
    assert m.num_classes == 3
    assert len(m) == 4
    df = m.df
    assert list(df.columns[:8]) == list(data.BASE_COLUMNS)
    assert df["row_id"].tolist() == ["abethr1/XC1", "zebra1/XC2", "1139490/iNat3", "abethr1/XC4"]
    assert df["path"].tolist() == [str(birdclef_2023.resolve() / "train_audio" / f"{r}.ogg") for r in df["row_id"]]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert df["primary_label"].tolist() == ["abethr1", "zebra1", "1139490", "abethr1"]
    assert df["secondary_labels"].tolist() == [["zebra1"], [], [], ["zebra1"]]
    assert df["labels"].tolist() == [["abethr1", "zebra1"], ["zebra1"], ["1139490"], ["abethr1", "zebra1"]]
    np.testing.assert_array_equal(df["rating"].to_numpy(), [4.0, 0.0, np.nan, 2.5])
    assert df["group"].tolist() == ["Ann", "Bob", "Cy", "Ann"]
    assert df["fold"].tolist() == [-1] * 4
    assert df["fold"].dtype.kind == "i"
    assert df["latitude"].tolist() == [0.0, 1.5, 3.0, 4.5]
    assert "filename" in df.columns


def test_read_birdclef_2021_layout(tmp_path: Path) -> None:
    """2021: `filename` has no label folder, audio lives in train_short_audio/, sample_submission has no classes."""
    root = tmp_path / "bc2021"
    for label, xc in [("wooduc", "XC10"), ("amecro", "XC11"), ("amecro", "XC12")]:
        write_audio(root / "train_short_audio" / label / f"{xc}.ogg", 0.2)
    write_csv(root / "train_metadata.csv", [
        {"primary_label": "wooduc", "secondary_labels": "['amecro']", "filename": "XC10.ogg", "author": "A"},
        {"primary_label": "amecro", "secondary_labels": "[]", "filename": "XC11.ogg", "author": "B"},
        {"primary_label": "amecro", "secondary_labels": "['wooduc']", "filename": "XC12.ogg", "author": "B"}])
    write_csv(root / "sample_submission.csv", [{"row_id": "3575_COL_5", "site": "COL", "audio_id": 3575,
                                                "seconds": 5, "birds": "nocall"}])
    m = load_manifest("auto", root)
    assert m.classes == ["amecro", "wooduc"]  # sorted: the 2021 sample submission lists no classes
    assert m.df["row_id"].tolist() == ["wooduc/XC10", "amecro/XC11", "amecro/XC12"]
    assert m.df["path"].iloc[0] == str(root.resolve() / "train_short_audio" / "wooduc" / "XC10.ogg")
    assert m.df["labels"].tolist() == [["wooduc", "amecro"], ["amecro"], ["amecro", "wooduc"]]
    assert m.df["rating"].isna().all()


def test_read_birdclef_classes_from_sample_submission(tmp_path: Path) -> None:
    root = tmp_path / "bc2024"
    for label in ("asbfly", "ashdro1"):
        write_audio(root / "train_audio" / label / "XC1.ogg", 0.2)
    write_csv(root / "train.csv", [{"primary_label": lab, "secondary_labels": "[]", "filename": f"{lab}/XC1.ogg"}
                                   for lab in ("asbfly", "ashdro1")])
    write_csv(root / "sample_submission.csv", [{"row_id": "x_5", "ashdro1": 0.1, "asbfly": 0.2, "zzz": 0.0}])
    m = read_birdclef(root)
    assert m.classes == ["ashdro1", "asbfly", "zzz"]
    assert load_manifest("auto", root / "train.csv").classes == m.classes
    m2 = read_birdclef(root, classes_from="sample_submission.csv", check_files=False)
    assert m2.classes == m.classes
    with pytest.raises(ManifestError, match=r"taxonomy\.csv: class file not found"):
        read_birdclef(root, classes_from="taxonomy.csv")


# ------------------------------------------------------------------------------------------ folder / CSV
def test_read_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "tree"
    write_audio(root / "b_cls" / "x.WAV", 0.1)
    write_audio(root / "a_cls" / "sub" / "y.flac", 0.1)
    write_audio(root / "a_cls" / "z.ogg", 0.1)
    write_audio(root / "a_cls" / ".hidden.wav", 0.1)
    write_audio(root / ".cache" / "q.wav", 0.1)
    write_audio(root / "loose.wav", 0.1)
    (root / "a_cls" / "notes.txt").write_text("not audio")
    with caplog.at_level(logging.WARNING, logger="nfaudio.data"):
        m = load_manifest("auto", root)
    assert "loose.wav" in caplog.text
    assert m.classes == ["a_cls", "b_cls"]
    assert m.df["row_id"].tolist() == ["a_cls/sub/y", "a_cls/z", "b_cls/x"]
    files = ("a_cls/sub/y.flac", "a_cls/z.ogg", "b_cls/x.WAV")
    assert m.df["path"].tolist() == [str(root.resolve() / p) for p in files]
    assert m.df["labels"].tolist() == [["a_cls"], ["a_cls"], ["b_cls"]]
    assert m.df["group"].isna().all()
    assert (m.df["fold"] == -1).all()
    assert read_folder(root, extensions=("wav",)).df["row_id"].tolist() == ["b_cls/x"]


def test_read_csv_manifest_multilabel_fold_group(tmp_path: Path) -> None:
    base = tmp_path / "ds"
    for name in ("clips/a.wav", "clips/b.wav", "other/c.flac"):
        write_audio(base / name, 0.1)
    outside = tmp_path / "abs" / "d.wav"
    write_audio(outside, 0.1)
    rows = [{"path": "clips/a.wav", "label": "dog;cat", "fold": 0, "group": "g1", "site": "s1"},
            {"path": "clips/b.wav", "label": "cat", "fold": 1, "group": "g1", "site": "s2"},
            {"path": "other/c.flac", "label": " bird ; dog;bird", "fold": None, "group": None, "site": "s3"},
            {"path": str(outside), "label": "cat", "fold": 2, "group": "g2", "site": "s4"}]
    m = load_manifest("auto", write_csv(base / "manifest.csv", rows))
    assert m.classes == ["bird", "cat", "dog"]
    assert m.df["row_id"].tolist() == ["clips/a", "clips/b", "other/c", outside.with_suffix("").as_posix()]
    assert m.df["path"].tolist() == [str(base / "clips/a.wav"), str(base / "clips/b.wav"),
                                     str(base / "other/c.flac"), str(outside)]
    assert m.df["primary_label"].tolist() == ["dog", "cat", "bird", "cat"]
    assert m.df["labels"].tolist() == [["dog", "cat"], ["cat"], ["bird", "dog"], ["cat"]]
    assert m.df["secondary_labels"].tolist() == [["cat"], [], ["dog"], []]
    assert m.df["fold"].tolist() == [0, 1, -1, 2]
    assert m.df["group"].tolist()[:2] == ["g1", "g1"]
    assert pd.isna(m.df["group"].iloc[2])
    assert m.df["site"].tolist() == ["s1", "s2", "s3", "s4"]
    # a CSV kept elsewhere, paths relative to `root`, explicit row ids
    csv = write_csv(tmp_path / "meta" / "m.csv", [{"path": "clips/a.wav", "label": "dog", "row_id": "rec-1"},
                                                  {"path": "clips/b.wav", "label": "cat", "row_id": None}])
    generic_train = write_csv(base / "train.csv", [{"path": "clips/a.wav", "label": "dog"}])
    assert load_manifest("auto", generic_train).df["row_id"].tolist() == ["clips/a"]
    renamed = write_csv(base / "r.csv", [{"file": "clips/a.wav", "tags": "cat;dog"}])
    m3 = read_csv_manifest(renamed, path_column="file", label_column="tags")
    assert m3.df["labels"].tolist() == [["cat", "dog"]]
    assert "file" not in m3.df.columns
    m2 = read_csv_manifest(csv, root=base)
    assert m2.df["row_id"].tolist() == ["rec-1", "clips/b"]
    assert m2.df["path"].tolist() == [str(base / "clips/a.wav"), str(base / "clips/b.wav")]


def test_manifest_subset_keeps_classes(birdclef_2023: Path) -> None:
    m = read_birdclef(birdclef_2023)
    sub = m.subset(m.df["primary_label"] == "abethr1")
    assert sub.df["row_id"].tolist() == ["abethr1/XC1", "abethr1/XC4"]
    assert sub.classes == m.classes
    assert sub.df.index.tolist() == [0, 1]
    assert m.subset([2]).df["row_id"].tolist() == ["1139490/iNat3"]


# ------------------------------------------------------------------------------------------ errors
def test_error_missing_metadata(tmp_path: Path) -> None:
    (tmp_path / "train_audio").mkdir()
    with pytest.raises(ManifestError, match=r"train_metadata\.csv: metadata not found") as exc:
        read_birdclef(tmp_path)
    assert isinstance(exc.value, ValueError)
    assert exc.value.path.endswith("train_metadata.csv")


def test_error_missing_columns_named(tmp_path: Path) -> None:
    write_csv(tmp_path / "train_metadata.csv", [{"secondary_labels": "[]", "rating": 3}])
    with pytest.raises(ManifestError, match=r"missing required column\(s\) \['primary_label', 'filename'\]"):
        read_birdclef(tmp_path, check_files=False)
    csv = write_csv(tmp_path / "m.csv", [{"file": "a.wav", "label": "x"}])
    with pytest.raises(ManifestError, match=r"m\.csv: missing required column\(s\) \['path'\]"):
        read_csv_manifest(csv)


def test_error_garbage_secondary_labels_names_file_and_row(birdclef_2023: Path) -> None:
    meta = birdclef_2023 / "train_metadata.csv"
    df = pd.read_csv(meta)
    df.loc[1, "secondary_labels"] = "['zebra1', "
    df.to_csv(meta, index=False)
    with pytest.raises(ManifestError, match=r"train_metadata\.csv: row 1 \(line 3\): secondary_labels"):
        read_birdclef(birdclef_2023)
    df.loc[1, "secondary_labels"] = "{'a': 1}"
    df.to_csv(meta, index=False)
    with pytest.raises(ManifestError, match="row 1 .* not a list of labels"):
        read_birdclef(birdclef_2023)


def test_error_empty_class_list(tmp_path: Path) -> None:
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "readme.txt").write_text("x")
    with pytest.raises(ManifestError, match="empty class list"):
        read_folder(tmp_path / "tree")
    bad = write_csv(tmp_path / "semi.csv", [{"path": "a.wav", "label": "x"}, {"path": "b.wav", "label": " ; "}])
    with pytest.raises(ManifestError, match=r"semi\.csv: row 1 \(line 3\): empty path or label"):
        read_csv_manifest(bad, check_files=False)
    csv = tmp_path / "empty.csv"
    csv.write_text("path,label\n")
    with pytest.raises(ManifestError, match=r"empty\.csv: empty class list"):
        read_csv_manifest(csv)


def test_error_duplicate_row_ids(tmp_path: Path) -> None:
    write_audio(tmp_path / "tree" / "a" / "x.wav", 0.1)
    write_audio(tmp_path / "tree" / "a" / "x.flac", 0.1)
    with pytest.raises(ManifestError, match=r"1 duplicate row id\(s\), e.g. \['a/x'\]"):
        read_folder(tmp_path / "tree")


def test_error_missing_audio_files_counted(tmp_path: Path) -> None:
    write_audio(tmp_path / "ok.wav", 0.1)
    rows = [{"path": "ok.wav", "label": "a"}] + [{"path": f"gone{i}.wav", "label": "a"} for i in range(5)]
    csv = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError, match=r"m\.csv: 5 of 6 audio file\(s\) listed are missing") as exc:
        read_csv_manifest(csv)
    assert str(tmp_path / "gone0.wav") in str(exc.value)
    assert "gone4" not in str(exc.value)
    assert len(read_csv_manifest(csv, check_files=False)) == 6


def test_error_primary_label_outside_classes(birdclef_2023: Path) -> None:
    write_csv(birdclef_2023 / "taxonomy.csv", [{"primary_label": "zebra1"}, {"primary_label": "abethr1"}])
    with pytest.raises(ManifestError, match=r"1 primary label\(s\) not in the class list, e.g. \['1139490'\]"):
        read_birdclef(birdclef_2023)


def test_load_manifest_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown manifest kind 'parquet'"):
        load_manifest("parquet", tmp_path)
    with pytest.raises(ManifestError, match="not found"):
        load_manifest("auto", tmp_path / "nope")


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
