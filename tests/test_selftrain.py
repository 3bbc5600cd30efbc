"""Pseudo-label tables: sharpening by hand, the table against the teacher's own scores, resume, options."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES

from nfaudio.predict import Predictor
from nfaudio.selftrain import pseudo_label, read_pseudo_labels, sharpen


def test_sharpen_by_hand() -> None:
    p = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.6]])
    np.testing.assert_allclose(sharpen(p, 2.0), p**2, rtol=1e-6)
    np.testing.assert_allclose(sharpen(p, 1.0, top_k=1), [[0.9, 0, 0], [0, 0, 0.6]], rtol=1e-6)
    np.testing.assert_allclose(sharpen(p, 1.0, top_k=2), [[0.9, 0.5, 0], [0.2, 0, 0.6]], rtol=1e-6)  # tie: first
    soft = sharpen(p, 3.0, normalize=True)
    np.testing.assert_allclose(soft, p**3 / (p**3).sum(1, keepdims=True), rtol=1e-6)
    assert soft.dtype == np.float32
    with pytest.raises(ValueError, match="power must be > 0"):
        sharpen(p, 0.0)
    with pytest.raises(ValueError, match="top_k"):
        sharpen(p, 1.0, top_k=0)


@pytest.fixture(scope="module")
def teacher(cv_dir):
    return Predictor.from_checkpoint(cv_dir, num_workers=0, threads=1)


def test_table_is_the_teachers_scores_sharpened(teacher, audio_dir, tmp_path) -> None:
    summary = pseudo_label(teacher, [audio_dir], tmp_path, power=2.0, floor=0.0, top_k=2)
    assert summary.n_failed == 0
    labels = read_pseudo_labels(tmp_path)
    raw = teacher.predict([audio_dir]).reset_index()
    assert labels.classes == CLASSES
    assert list(labels.table.columns) == ["file", "start_s", "end_s", *CLASSES]
    pd.testing.assert_frame_equal(labels.table[["file", "start_s", "end_s"]], raw[["file", "start_s", "end_s"]])
    expected = sharpen(raw[CLASSES].to_numpy(), 2.0, top_k=2)
    np.testing.assert_allclose(labels.targets(), expected, rtol=1e-5, atol=1e-7)
    assert ((labels.targets() > 0).sum(1) <= 2).all()
    # per-file weight: sum of the windows' raw maximum probability
    weights = raw.assign(top=raw[CLASSES].max(axis=1)).groupby("file", sort=False)["top"].agg(["size", "sum"])
    files = labels.files.set_index("file")
    assert list(files.index) == list(weights.index)
    np.testing.assert_array_equal(files["windows"], weights["size"])
    np.testing.assert_allclose(files["weight"], weights["sum"], rtol=1e-5)
    info = json.loads((tmp_path / "pseudo_labels.json").read_text())
    assert info["power"] == 2.0
    assert info["top_k"] == 2
    assert info["window"] == teacher.window
    assert len(info["teacher"]["models"]) == 2  # the fold ensemble
    assert info["rows"] == info["windows"] == len(raw)


def test_floor_drops_windows_and_a_rerun_rescores_nothing(teacher, audio_dir, tmp_path) -> None:
    pseudo_label(teacher, [audio_dir], tmp_path)
    raw = read_pseudo_labels(tmp_path).table
    best = np.sort(raw[CLASSES].max(axis=1).unique())
    mid = len(best) // 2
    floor = float(best[mid - 1] + best[mid]) / 2  # between two windows: the table's rounding cannot tip one over
    summary = pseudo_label(teacher, [audio_dir], tmp_path, floor=floor)  # same scores, other options
    assert summary.n_resumed == summary.n_files
    assert summary.n_scored == 0
    labels = read_pseudo_labels(tmp_path / "pseudo_labels.csv")
    keep = raw[CLASSES].max(axis=1) >= floor
    pd.testing.assert_frame_equal(labels.table, raw[keep].reset_index(drop=True), check_exact=False, rtol=1e-5)
    assert 0 < len(labels.table) < len(raw)
    assert labels.files["kept"].sum() == keep.sum()
    assert labels.files["windows"].sum() == len(raw)


def test_bad_files_are_reported_and_options_checked(teacher, audio_dir, tmp_path) -> None:
    inputs = tmp_path / "in"
    shutil.copytree(audio_dir, inputs)
    (inputs / "broken.wav").write_bytes(b"RIFF\x00\x00")
    summary = pseudo_label(teacher, [inputs], tmp_path / "out")
    assert summary.n_failed == 1
    errors = pd.read_csv(tmp_path / "out" / "scores" / "errors.csv")
    assert errors["file"].map(os.path.basename).tolist() == ["broken.wav"]
    assert "broken.wav" not in set(read_pseudo_labels(tmp_path / "out").files["file"].map(os.path.basename))
    with pytest.raises(ValueError, match="floor must be in"):
        pseudo_label(teacher, [inputs], tmp_path / "x", floor=1.5)
    with pytest.raises(ValueError, match="power"):
        pseudo_label(teacher, [inputs], tmp_path / "x", power=-1)
    with pytest.raises(FileNotFoundError, match="not a pseudo-label folder"):
        read_pseudo_labels(tmp_path / "x")


def test_pseudo_label_command(cv_dir, audio_dir, tmp_path, capsys) -> None:
    from nfaudio.cli import main

    recipe = tmp_path / "student.yaml"
    recipe.write_text("audio:\n  duration: 2.0\n")
    code = main(["pseudo-label", str(cv_dir), str(audio_dir), "--out", str(tmp_path / "pl"), "--recipe",
                 str(recipe), "--power", "2", "--top-k", "1", "--workers", "0"])
    assert code == 0
    assert "pseudo-labels in" in capsys.readouterr().out
    labels = read_pseudo_labels(tmp_path / "pl")
    assert (labels.table["end_s"] - labels.table["start_s"]).eq(2.0).all()  # the student's window
    assert labels.info["power"] == 2.0
    assert ((labels.targets() > 0).sum(1) <= 1).all()
    assert main(["pseudo-label", str(cv_dir), str(audio_dir), "--out", str(tmp_path / "x"), "--power", "0"]) == 2
