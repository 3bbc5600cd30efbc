"""Tests for nfaudio.formats: row ids, and every output format written by a prediction run read back and checked
against the prediction table by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ALL_FORMATS, CLASSES

from nfaudio.formats import (
    KALEIDOSCOPE_COLUMNS,
    RAVEN_COLUMNS,
    row_id,
    scores_frame,
    to_detections,
    to_kaleidoscope,
    to_submission,
)
from nfaudio.predict import Predictor
from nfaudio.predict_run import run_prediction

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_row_id_is_the_stem_and_the_exact_end_second() -> None:
    assert row_id("soundscape_29201", 5.0) == "soundscape_29201_5"
    assert row_id("soundscape_29201", 7.25) == "soundscape_29201_7.25"
    assert row_id("soundscape_29201", 600.0) == "soundscape_29201_600"
    assert row_id("s", 0.1 * 3) == "s_0.3"  # microsecond resolution: float noise does not leak into the key


def test_submission_row_ids_are_row_id_of_each_window() -> None:
    scores = pd.concat([
        scores_frame("/data/soundscape_1.ogg", np.array([0.0, 5.0]), np.array([5.0, 10.0]),
                     np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], np.float32), CLASSES),
        scores_frame("x/rec.b.wav", np.array([0.0, 4.25]), np.array([2.5, 7.25]),
                     np.array([[0.7, 0.8, 0.9], [1.0, 0.0, 0.5]], np.float32), CLASSES)])
    sub = to_submission(scores)
    assert list(sub.columns) == ["row_id", *CLASSES]
    assert list(sub.row_id) == [row_id(Path(f).stem, end) for f, _, end in scores.index]
    assert list(sub.row_id) == ["soundscape_1_5", "soundscape_1_10", "rec.b_2.5", "rec.b_7.25"]
    np.testing.assert_array_equal(sub[CLASSES].to_numpy(), scores.to_numpy())


# ----------------------------------------------------------------------------- every format, written and read back
def test_every_output_format_reads_back(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, batch_size=4, num_workers=1)
    ref = pred.predict([audio_dir])
    out = tmp_path / "out"
    summary = run_prediction(pred, [audio_dir], out, formats=ALL_FORMATS, threshold=0.3, top_k=2, progress=False)
    assert (summary.n_files, summary.n_failed, summary.n_resumed) == (3, 0, 0)
    assert summary.audio_seconds == pytest.approx(3.5 + 2.0 + 2.6, abs=1e-3)

    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == ["row_id", *CLASSES]
    assert list(sub.row_id[:4]) == ["rec_a_1", "rec_a_2", "rec_a_3", "rec_a_4"]
    assert list(sub.row_id[4:]) == ["rec_b_1", "rec_b_2", "rec_c_1", "rec_c_2", "rec_c_3"]
    np.testing.assert_allclose(sub[CLASSES].to_numpy(), ref.to_numpy(), rtol=1e-5, atol=1e-7)
    assert list(to_submission(ref).row_id) == list(sub.row_id)

    table = pd.read_csv(out / "scores.csv")
    assert list(table.columns) == ["file", "start_s", "end_s", *CLASSES]
    assert list(table.file) == list(ref.index.get_level_values("file"))
    np.testing.assert_allclose(table[["start_s", "end_s"]].to_numpy(), ref.index.to_frame()[["start_s", "end_s"]])
    np.testing.assert_allclose(table[CLASSES].to_numpy(), ref.to_numpy(), rtol=1e-5, atol=1e-7)

    dets = pd.read_csv(out / "detections.csv")
    assert list(dets.columns) == ["file", "start_s", "end_s", "label", "score"]
    expected = []  # by hand: per window, the <= 2 best classes scoring >= 0.3, best first
    for (file, start, end), row in ref.iterrows():
        best = sorted(((s, c) for c, s in row.items() if s >= 0.3), key=lambda x: -x[0])[:2]
        expected += [(file, start, end, c, s) for s, c in best]
    assert [tuple(r[:4]) for r in dets.itertuples(index=False)] == [e[:4] for e in expected]
    np.testing.assert_allclose(dets.score, [e[4] for e in expected], rtol=1e-5)
    pd.testing.assert_frame_equal(to_detections(ref, 0.3, 2)[["file", "label"]], dets[["file", "label"]])

    durations = {"rec_a": 3.5, "rec_b": 2.0, "rec_c": 2.6}
    combined = pd.read_csv(out / "raven_selections.txt", sep="\t")
    assert list(combined.columns) == [*RAVEN_COLUMNS, "Begin Path", "File Offset (s)"]
    assert list(combined.Selection) == list(range(1, len(dets) + 1))
    offsets = dets.file.map({f: sum(list(durations.values())[:i]) for i, f in enumerate(dict.fromkeys(dets.file))})
    np.testing.assert_allclose(combined["Begin Time (s)"], dets.start_s + offsets, atol=1e-3)
    np.testing.assert_allclose(combined["File Offset (s)"], dets.start_s)
    assert list(combined["Begin Path"]) == [str(Path(f).resolve()) for f in dets.file]
    for rel, stem in (("rec_a", "rec_a"), ("sub/rec_c", "rec_c")):
        mine = dets[dets.file.map(lambda f, s=stem: Path(f).stem == s)].reset_index(drop=True)
        raven = pd.read_csv(out / "raven" / f"{rel}.selections.txt", sep="\t")
        assert list(raven.columns) == RAVEN_COLUMNS
        assert list(raven.Selection) == list(range(1, len(mine) + 1))
        assert (raven.View == "Spectrogram 1").all()
        assert (raven.Channel == 1).all()
        assert (raven["Low Freq (Hz)"] == 20.0).all()
        assert (raven["High Freq (Hz)"] == 8000.0).all()
        np.testing.assert_allclose(raven[["Begin Time (s)", "End Time (s)"]].to_numpy(), mine[["start_s", "end_s"]])
        assert list(raven.Species) == list(mine.label)
        np.testing.assert_allclose(raven.Confidence, mine.score, rtol=1e-5)
        labels = pd.read_csv(out / "audacity" / f"{rel}.txt", sep="\t", header=None, names=["start", "end", "label"])
        np.testing.assert_allclose(labels[["start", "end"]].to_numpy(), mine[["start_s", "end_s"]])
        assert list(labels.label) == [f"{c} ({s:.3f})" for c, s in zip(mine.label, mine.score)]
    assert pd.read_csv(out / "errors.csv").empty

    kaleido = out / "kaleidoscope.csv"
    assert kaleido.read_text().splitlines()[0] == (  # BirdNET-Analyzer's KALEIDOSCOPE_HEADER
        "INDIR,FOLDER,IN FILE,OFFSET,DURATION,scientific_name,common_name,confidence,lat,lon,week,overlap,sensitivity")
    _check_kaleidoscope(pd.read_csv(kaleido, dtype={"FOLDER": str}), dets, overlap=0.0)


def _check_kaleidoscope(rows: pd.DataFrame, dets: pd.DataFrame, overlap: float) -> None:
    """Every Kaleidoscope row against its detection, row by row."""
    assert list(rows.columns) == KALEIDOSCOPE_COLUMNS
    assert len(rows) == len(dets) > 0
    for k, det in zip(rows.to_dict("records"), dets.itertuples(index=False)):
        path = Path(det.file).resolve()
        assert (k["INDIR"], k["FOLDER"], k["IN FILE"]) == (str(path.parent.parent), path.parent.name, path.name)
        assert k["OFFSET"] == pytest.approx(det.start_s, abs=1e-6)
        assert k["DURATION"] == pytest.approx(det.end_s - det.start_s, abs=1e-6)
        assert k["scientific_name"] == k["common_name"] == det.label
        assert k["confidence"] == pytest.approx(det.score, rel=1e-5)
        assert (k["lat"], k["lon"], k["week"], k["sensitivity"]) == (-1, -1, -1, 1.0)
        assert k["overlap"] == pytest.approx(overlap)


def test_kaleidoscope_rows_are_the_detections_with_the_path_split_like_birdnet(tmp_path: Path) -> None:
    scores = pd.concat([
        scores_frame(tmp_path / "site1" / "rec1.wav", np.array([0.0, 2.25]), np.array([3.0, 5.25]),
                     np.array([[0.9, 0.1, 0.6], [0.2, 0.3, 0.1]], np.float32), CLASSES),
        scores_frame(tmp_path / "site2" / "rec2.flac", np.array([0.0]), np.array([3.0]),
                     np.array([[0.0, 0.7, 0.0]], np.float32), CLASSES)])
    dets = to_detections(scores, threshold=0.5)
    rows = to_kaleidoscope(dets, overlap=0.75)
    assert list(rows.columns) == KALEIDOSCOPE_COLUMNS
    assert rows.values.tolist() == [
        [str(tmp_path), "site1", "rec1.wav", 0.0, 3.0, "alpha", "alpha", pytest.approx(0.9), -1, -1, -1, 0.75, 1.0],
        [str(tmp_path), "site1", "rec1.wav", 0.0, 3.0, "gamma", "gamma", pytest.approx(0.6), -1, -1, -1, 0.75, 1.0],
        [str(tmp_path), "site2", "rec2.flac", 0.0, 3.0, "beta", "beta", pytest.approx(0.7), -1, -1, -1, 0.75, 1.0]]
    assert to_kaleidoscope(dets, overlap=-1.0)["overlap"].tolist() == [0.0] * 3  # a gap between windows: none


def test_kaleidoscope_of_overlapping_windows_and_of_an_empty_run(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, hop=0.5, num_workers=0)
    run_prediction(pred, [audio_dir], tmp_path / "a", formats=["detections", "kaleidoscope"], threshold=0.2,
                   progress=False)
    dets = pd.read_csv(tmp_path / "a" / "detections.csv")
    _check_kaleidoscope(pd.read_csv(tmp_path / "a" / "kaleidoscope.csv", dtype={"FOLDER": str}), dets, overlap=0.5)
    bad = tmp_path / "in" / "broken.wav"
    bad.parent.mkdir()
    bad.write_bytes(b"not audio at all")
    summary = run_prediction(pred, [bad], tmp_path / "b", formats=["kaleidoscope"], progress=False)
    assert (summary.n_files, summary.n_failed) == (1, 1)
    assert (tmp_path / "b" / "kaleidoscope.csv").read_text() == ",".join(KALEIDOSCOPE_COLUMNS) + "\n"
