"""Tests for nfaudio.manifest: the BirdCLEF, folder and CSV readers, kind detection, and their errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_audio, write_csv

from nfaudio import manifest
from nfaudio.manifest import (
    ManifestError,
    detect_kind,
    load_manifest,
    read_birdclef,
    read_csv_manifest,
    read_folder,
)


# ------------------------------------------------------------------------------------------ BirdCLEF
def test_read_birdclef_2023_layout(birdclef_2023: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nfaudio.manifest"):
        m = read_birdclef(birdclef_2023)
    assert "unknown9" in caplog.text
    assert m.classes == ["zebra1", "abethr1", "1139490"]  # taxonomy.csv wins over sample_submission.csv
    assert m.num_classes == 3
    assert len(m) == 4
    df = m.df
    assert list(df.columns[:8]) == list(manifest.BASE_COLUMNS)
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
    with caplog.at_level(logging.WARNING, logger="nfaudio.manifest"):
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
    with pytest.raises(ManifestError) as exc:
        read_folder(tmp_path / "tree")
    tree = tmp_path / "tree"
    assert str(exc.value) == (f"{tree}: {tree / 'a' / 'x.wav'}: duplicate row id 'a/x' "
                              f"(first at {tree / 'a' / 'x.flac'})")


def test_error_missing_audio_files_counted(tmp_path: Path) -> None:
    write_audio(tmp_path / "ok.wav", 0.1)
    rows = [{"path": "ok.wav", "label": "a"}] + [{"path": f"gone{i}.wav", "label": "a"} for i in range(5)]
    csv = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError) as exc:
        read_csv_manifest(csv)
    assert str(exc.value).splitlines() == [f"{csv}: row {i} (line {i + 2}): audio file not found: "
                                           f"{tmp_path / f'gone{i - 1}.wav'}" for i in range(1, 6)]
    assert len(read_csv_manifest(csv, check_files=False)) == 6
    many = write_csv(tmp_path / "many.csv", [{"path": f"gone{i}.wav", "label": "a"} for i in range(25)])
    with pytest.raises(ManifestError) as exc:  # one line each for the first 20, then a count
        read_csv_manifest(many)
    lines = str(exc.value).splitlines()
    assert len(lines) == 21
    assert lines[-1] == f"{many}: ... and 5 more missing audio files"


def test_error_primary_label_outside_classes(birdclef_2023: Path) -> None:
    write_csv(birdclef_2023 / "taxonomy.csv", [{"primary_label": "zebra1"}, {"primary_label": "abethr1"}])
    with pytest.raises(ManifestError) as exc:
        read_birdclef(birdclef_2023)
    assert exc.value.problems == ["row 2 (line 4): primary label '1139490' is not in the class list"]


def test_every_problem_of_a_csv_manifest_is_listed_at_once(tmp_path: Path) -> None:
    write_audio(tmp_path / "a.wav", 0.1)
    write_audio(tmp_path / "b.wav", 0.1)
    rows = [{"path": "a.wav", "label": "dog;cat"},
            {"path": "gone.wav", "label": "dog"},       # missing file
            {"path": "b.wav", "label": "cat;zebra"},    # a secondary label no other row has: a class, not a problem
            {"path": "a.wav", "label": "dog;cat"},      # duplicate row
            {"path": "b.wav", "label": ""}]             # empty label
    csv = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError) as exc:
        read_csv_manifest(csv)
    assert exc.value.problems == ["row 4 (line 6): empty path or label",
                                  "row 3 (line 5): duplicate row id 'a' (first at row 0 (line 2))",
                                  f"row 1 (line 3): audio file not found: {tmp_path / 'gone.wav'}"]
    assert str(exc.value).splitlines() == [f"{csv}: {p}" for p in exc.value.problems]


def test_every_problem_of_birdclef_metadata_is_listed_at_once(birdclef_2023: Path) -> None:
    meta = birdclef_2023 / "train_metadata.csv"
    df = pd.read_csv(meta)
    extra = [dict(df.iloc[0]),                                                        # duplicate row
             {**df.iloc[1], "primary_label": "dodo1", "filename": "dodo1/XC9.ogg"},   # unknown primary, no file
             {**df.iloc[1], "secondary_labels": "['zebra1', "}]                       # unparsable
    pd.concat([df, pd.DataFrame(extra)]).to_csv(meta, index=False)
    with pytest.raises(ManifestError) as exc:
        read_birdclef(birdclef_2023)
    audio = birdclef_2023 / "train_audio"
    assert exc.value.problems == [
        "row 6 (line 8): secondary_labels \"['zebra1', \" is not a Python list literal (SyntaxError)",
        "row 5 (line 7): primary label 'dodo1' is not in the class list",
        "row 4 (line 6): duplicate row id 'abethr1/XC1' (first at row 0 (line 2))",
        f"row 5 (line 7): audio file not found: {audio / 'dodo1' / 'XC9.ogg'}"]
    assert exc.value.path == str(meta)


def test_load_manifest_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown manifest kind 'parquet'"):
        load_manifest("parquet", tmp_path)
    with pytest.raises(ManifestError, match="not found"):
        load_manifest("auto", tmp_path / "nope")


# ------------------------------------------------------------------------------------------ kind detection
def test_detect_kind_by_folder_contents_and_file_columns(tmp_path: Path) -> None:
    birdclef_rows = [{"primary_label": "a", "secondary_labels": "[]", "filename": "a/x.ogg"}]
    competition = tmp_path / "bc2023"
    write_csv(competition / "train_metadata.csv", birdclef_rows)
    assert detect_kind(competition) == "birdclef"
    assert detect_kind(competition / "train_metadata.csv") == "birdclef"
    bc2024 = tmp_path / "bc2024"  # 2024 named its metadata train.csv
    write_csv(bc2024 / "train.csv", birdclef_rows)
    assert detect_kind(bc2024) == "birdclef"
    assert detect_kind(bc2024 / "train.csv") == "birdclef"
    write_audio(tmp_path / "tree" / "dog" / "x.wav", 0.1)
    assert detect_kind(tmp_path / "tree") == "folder"
    # a generic manifest may be called train.csv too: its columns, not its name, decide
    generic = write_csv(tmp_path / "generic" / "train.csv", [{"path": "clips/a.wav", "label": "dog"}])
    assert detect_kind(generic) == "csv"
    assert detect_kind(generic.parent) == "folder"  # the same rule for the folder holding it
    # only files named like BirdCLEF metadata are looked into; any other CSV is a generic manifest
    assert detect_kind(write_csv(tmp_path / "meta.csv", birdclef_rows)) == "csv"
    with pytest.raises(ManifestError, match="not found") as exc:
        detect_kind(tmp_path / "nope")
    assert exc.value.path == str(tmp_path / "nope")
