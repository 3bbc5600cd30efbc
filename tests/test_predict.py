"""Tests for nfaudio.predict, nfaudio.predict_run and nfaudio.formats: windows, values, ensembling, TTA, smoothing,
every output format read back, bad files, and crash-safe resume (including a kill -9 of the CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import recipe_model

from nfaudio.audio import load, window_starts
from nfaudio.cli import main
from nfaudio.formats import RAVEN_COLUMNS, to_detections, to_submission
from nfaudio.inputs import list_audio
from nfaudio.models import load_model, save_model
from nfaudio.predict import Predictor, smooth_neighbours
from nfaudio.predict_run import Journal, RunConflictError, run_prediction
from nfaudio.rundir import RunDir, find_checkpoints, run_of

SR = 16000
CLASSES = ["alpha", "beta", "gamma"]
FRONTEND = dict(sample_rate=SR, n_fft=512, hop_length=160, n_mels=32, fmin=20.0, fmax=8000.0)
ALL_FORMATS = ["submission", "table", "detections", "raven", "audacity"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_model(path: Path, seed: int) -> Path:
    model = recipe_model(len(CLASSES), FRONTEND, seed=seed)  # SpecAugment, dropout, drop-path; one step trained
    return save_model(model, path, classes=CLASSES, duration=1.0, activation="sigmoid")


def _write(path: Path, seconds: float, sr: int = SR, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    y = 0.3 * np.sin(2 * np.pi * (500 + 300 * seed) * t) * (t % 1.0 < 0.4) + 0.05 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y.astype(np.float32), sr)
    return path


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    _save_model(root / "fold0" / "best.pt", seed=0)
    _save_model(root / "fold1" / "best.pt", seed=1)
    return root


@pytest.fixture(scope="module")
def ckpt(cv_dir: Path) -> Path:
    return cv_dir / "fold0" / "best.pt"


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    _write(root / "rec_a.wav", 3.5, seed=0)
    _write(root / "rec_b.flac", 2.0, seed=1)
    _write(root / "sub" / "rec_c.ogg", 2.6, sr=22050, seed=2)  # resampled 22.05 -> 16 kHz
    (root / "notes.md").write_text("not audio")
    return root


def _reference(ckpt: Path, windows: np.ndarray) -> np.ndarray:
    model = load_model(ckpt)
    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(windows)).clip).numpy()


# ----------------------------------------------------------------------------- inputs
def test_find_checkpoints_file_run_and_cv(cv_dir: Path, tmp_path: Path) -> None:
    assert find_checkpoints(cv_dir / "fold0" / "best.pt") == [cv_dir / "fold0" / "best.pt"]
    assert find_checkpoints(cv_dir / "fold1") == [cv_dir / "fold1" / "best.pt"]
    assert find_checkpoints(cv_dir) == [cv_dir / "fold0" / "best.pt", cv_dir / "fold1" / "best.pt"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_checkpoints(tmp_path)


def test_list_audio_folders_manifests_and_missing(audio_dir: Path, tmp_path: Path) -> None:
    found = list_audio([audio_dir])
    assert [f.relative_to(audio_dir).as_posix() for f in found] == ["rec_a.wav", "rec_b.flac", "sub/rec_c.ogg"]
    pd.DataFrame({"path": [str(audio_dir / "rec_b.flac"), "x/missing.wav"]}).to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "m.txt").write_text(f"# comment\n{audio_dir / 'rec_a.wav'}\n\n")
    assert list_audio([tmp_path / "m.csv", tmp_path / "m.txt", audio_dir / "rec_a.wav"]) == [
        audio_dir / "rec_b.flac", tmp_path / "x" / "missing.wav", audio_dir / "rec_a.wav"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_audio([tmp_path / "nope"])


# ----------------------------------------------------------------------------- windows and values
@pytest.mark.parametrize(("hop", "last"), [(1.0, "pad"), (1.0, "drop"), (1.0, "shift"), (0.5, "pad"), (0.75, "shift")])
def test_windows_follow_hop_and_last_policy(ckpt: Path, audio_dir: Path, hop: float, last: str) -> None:
    path = audio_dir / "rec_a.wav"  # 3.5 s: pad -> a zero-padded 4th window, drop -> 3, shift -> one at 2.5 s
    pred = Predictor.from_checkpoint(ckpt, hop=hop, last=last, batch_size=3, num_workers=0)
    df = pred.predict_file(path)
    y, _ = load(path, SR)
    starts = window_starts(len(y), SR, int(hop * SR), last)
    np.testing.assert_allclose(df.index.get_level_values("start_s"), starts / SR)
    np.testing.assert_allclose(df.index.get_level_values("end_s"), starts / SR + 1.0)
    padded = np.pad(y, (0, SR))
    windows = np.stack([padded[s:s + SR] for s in starts])
    np.testing.assert_allclose(df.to_numpy(), _reference(ckpt, windows), atol=1e-5)
    assert list(df.columns) == CLASSES
    assert df.index.names == ["file", "start_s", "end_s"]


def test_overlap_is_window_minus_hop(ckpt: Path) -> None:
    assert Predictor.from_checkpoint(ckpt, overlap=0.25, num_workers=0).hop == 0.75
    with pytest.raises(ValueError, match="hop or overlap"):
        Predictor.from_checkpoint(ckpt, hop=0.5, overlap=0.25)


def test_workers_give_same_scores_in_input_order(ckpt: Path, audio_dir: Path) -> None:
    # the same thread count on both sides: the default policy gives 2 - workers threads, and torch's sums may
    # round differently with another count
    inline = Predictor.from_checkpoint(ckpt, batch_size=2, num_workers=0, threads=1).predict([audio_dir])
    pooled = Predictor.from_checkpoint(ckpt, batch_size=2, num_workers=2, threads=1).predict([audio_dir])
    pd.testing.assert_frame_equal(inline, pooled, check_exact=True)
    files = list(dict.fromkeys(inline.index.get_level_values("file")))
    assert files == [str(f) for f in list_audio([audio_dir])]
    assert (inline.groupby(level="file", sort=False).size().to_numpy() == [4, 2, 3]).all()


def test_predictor_leaves_the_callers_model_as_it_found_it(ckpt: Path, audio_dir: Path) -> None:
    model = recipe_model(len(CLASSES), FRONTEND, seed=4)  # training mode, SpecAugment p=1, dropout, drop-path
    modes = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = Predictor(model, CLASSES, window=1.0, num_workers=0, device="cpu")
    first = predictor.predict([audio_dir / "rec_a.wav"])
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # scored in eval mode (no random masks or dropout): repeatable, and equal to the eval-mode model
    np.testing.assert_array_equal(predictor.predict([audio_dir / "rec_a.wav"]).to_numpy(), first.to_numpy())
    y, _ = load(audio_dir / "rec_a.wav", SR)
    padded = np.pad(y, (0, SR))
    windows = np.stack([padded[s:s + SR] for s in window_starts(len(y), SR, SR, "pad")])
    with torch.inference_mode():
        ref = torch.sigmoid(model.eval()(torch.from_numpy(windows)).clip).numpy()
    np.testing.assert_allclose(first.to_numpy(), ref, atol=1e-6)


def test_ensemble_is_mean_of_members(cv_dir: Path, audio_dir: Path) -> None:
    inputs = [audio_dir / "rec_a.wav"]
    both = Predictor.from_checkpoint(cv_dir, num_workers=0).predict(inputs)
    each = [Predictor.from_checkpoint(cv_dir / f"fold{k}", num_workers=0).predict(inputs) for k in (0, 1)]
    np.testing.assert_allclose(both.to_numpy(), (each[0].to_numpy() + each[1].to_numpy()) / 2, atol=1e-6)
    assert not np.allclose(each[0].to_numpy(), each[1].to_numpy())


def test_time_shift_tta_by_hand(ckpt: Path, audio_dir: Path) -> None:
    path = audio_dir / "rec_a.wav"
    df = Predictor.from_checkpoint(ckpt, tta_shifts=[-0.5, 0.5], batch_size=6, num_workers=0).predict_file(path)
    y, _ = load(path, SR)
    half = SR // 2
    padded = np.concatenate([np.zeros(half, np.float32), y, np.zeros(2 * SR, np.float32)])  # zeros outside the file
    expected = []
    for start in (0, 1, 2, 3):
        wins = np.stack([padded[half + start * SR + d:half + start * SR + d + SR] for d in (-half, 0, half)])
        expected.append(_reference(ckpt, wins).mean(axis=0))
    np.testing.assert_allclose(df.to_numpy(), np.stack(expected), atol=1e-5)
    with pytest.raises(ValueError, match="TTA shifts"):
        Predictor.from_checkpoint(ckpt, tta_shifts=[1.5])


def test_neighbour_smoothing_by_hand(ckpt: Path, audio_dir: Path) -> None:
    p = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(smooth_neighbours(p, 0.25), [[0.75, 0], [0.25, 0.25], [0, 0.75]])
    np.testing.assert_array_equal(smooth_neighbours(p[:1], 0.25), p[:1])
    with pytest.raises(ValueError, match="smoothing"):
        smooth_neighbours(p, 0.6)
    path = audio_dir / "rec_a.wav"
    raw = Predictor.from_checkpoint(ckpt, num_workers=0).predict_file(path).to_numpy()
    smooth = Predictor.from_checkpoint(ckpt, smoothing=0.2, num_workers=0).predict_file(path).to_numpy()
    by_hand = [0.8 * raw[0] + 0.2 * raw[1], *(0.6 * raw[k] + 0.2 * (raw[k - 1] + raw[k + 1]) for k in (1, 2)),
               0.8 * raw[3] + 0.2 * raw[2]]
    np.testing.assert_allclose(smooth, np.stack(by_hand), atol=1e-6)


# ----------------------------------------------------------------------------- outputs
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


def test_parquet_table(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    pred = Predictor.from_checkpoint(ckpt, num_workers=0)
    run_prediction(pred, [audio_dir], tmp_path, formats=["table"], table_format="parquet", progress=False)
    table = pd.read_parquet(tmp_path / "scores.parquet")
    pd.testing.assert_frame_equal(table.set_index(["file", "start_s", "end_s"]), pred.predict([audio_dir]))


def test_bad_files_go_to_errors_csv_and_exit_status(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    _write(data / "good.wav", 2.0)
    (data / "empty.wav").write_bytes(b"")
    (data / "text.wav").write_text("hello, not audio")
    _write(data / "short.wav", 0.1)
    full = (audio_dir / "rec_a.wav").read_bytes()
    (data / "truncated.wav").write_bytes(full[: len(full) // 2])
    rc = main(["predict", str(ckpt), str(data), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "2"])
    assert rc == 1
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert [Path(f).name for f in errors.file] == ["empty.wav", "short.wav", "text.wav", "truncated.wav"]
    reasons = dict(zip((Path(f).name for f in errors.file), errors.reason))
    assert "empty" in reasons["empty.wav"]
    assert "too short" in reasons["short.wav"]
    assert "truncated" in reasons["truncated.wav"]
    assert "not readable" in reasons["text.wav"]
    assert list(pd.read_csv(tmp_path / "out" / "submission.csv").row_id) == ["good_1", "good_2"]
    drop = Predictor.from_checkpoint(ckpt, last="drop", min_duration=0.0, num_workers=0)
    assert drop.predict([data / "short.wav"]).empty
    assert "no full 1 s window" in drop.errors_.reason[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the patch reaches workers through fork")
def test_a_crashing_decoder_fails_only_its_file(ckpt: Path, audio_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nfaudio.decode as decode_module

    original = decode_module._file_messages

    def crash_on_b(idx, path, spec):  # runs in the forked decode worker
        if path.stem == "rec_b":
            os._exit(3)
        yield from original(idx, path, spec)

    monkeypatch.setattr(decode_module, "_file_messages", crash_on_b)
    pred = Predictor.from_checkpoint(ckpt, num_workers=1)
    df = pred.predict([audio_dir])
    assert [Path(f).stem for f in dict.fromkeys(df.index.get_level_values("file"))] == ["rec_a", "rec_c"]
    assert list(pred.errors_.reason) == ["decoder process died (exit code 3)"]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".nfaudio" not in p.parts}


def test_resume_skips_finished_files_and_refuses_other_settings(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, num_workers=0)
    fresh = run_prediction(pred, [audio_dir], tmp_path / "a", formats=ALL_FORMATS, progress=False)
    journal = tmp_path / "a" / ".nfaudio" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    assert fresh.n_scored == 3
    assert len(lines) == 3
    journal.write_text(lines[0] + "\n" + lines[1][:10])  # as if killed while writing the second line
    (tmp_path / "a" / "submission.csv").unlink()
    (tmp_path / "a" / "raven" / "rec_b.selections.txt.nfaudio-tmp").write_text("half-written")  # killed mid-write
    again = run_prediction(pred, [audio_dir], tmp_path / "a", formats=ALL_FORMATS, progress=False)
    assert (again.n_resumed, again.n_scored) == (1, 2)
    run_prediction(pred, [audio_dir], tmp_path / "b", formats=ALL_FORMATS, progress=False)
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")
    other = Predictor.from_checkpoint(ckpt, hop=0.5, num_workers=0)
    with pytest.raises(RunConflictError, match="hop"):
        run_prediction(other, [audio_dir], tmp_path / "a", progress=False)
    redo = run_prediction(other, [audio_dir], tmp_path / "a", overwrite=True, progress=False)
    assert redo.n_resumed == 0
    assert len(pd.read_csv(tmp_path / "a" / "scores.csv")) == 6 + 3 + 5


def _try_journal(root: Path, answer) -> None:
    try:
        Journal(root, {"run": 1}).close()
        answer.put("locked")
    except RunConflictError as err:
        answer.put(str(err))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses fork")
def test_a_second_concurrent_run_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    journal = Journal(tmp_path / ".nfaudio", {"run": 1})
    answer = ctx.Queue()
    child = ctx.Process(target=_try_journal, args=(tmp_path / ".nfaudio", answer))
    child.start()
    assert "another run is writing" in answer.get(timeout=30)
    child.join()
    journal.close()
    _try_journal(tmp_path / ".nfaudio", answer)
    assert answer.get(timeout=30) == "locked"


@pytest.mark.integration
def test_kill_9_then_resume_gives_identical_outputs(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    for i in range(12):
        _write(data / f"rec{i:02d}.wav", 20.0, seed=i % 3)
    args = ["predict", str(ckpt), str(data), "--format", ",".join(ALL_FORMATS), "--threshold", "0.2",
            "--batch-size", "1", "--workers", "1", "--threads", "1", "--no-progress"]
    killed = tmp_path / "killed"
    journal = killed / ".nfaudio" / "journal.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "nfaudio", *args, "--out", str(killed)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 2):
        assert proc.poll() is None, "the run ended before 2 files were journaled"
        assert time.monotonic() < deadline, "no file journaled in time"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(journal.read_text().splitlines())
    assert 2 <= n_done < 12, f"kill came too late ({n_done} of 12 files done)"
    assert not (killed / "submission.csv").exists()
    assert main([*args, "--out", str(killed)]) == 0  # the same command resumes
    assert json.loads(journal.read_text().splitlines()[0])["windows"] == 20
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    snap, clean = _snapshot(killed), _snapshot(tmp_path / "clean")
    assert set(snap) == set(clean)
    assert len(snap) == 4 + 2 * 12 + 1
    for name in clean:
        assert snap[name] == clean[name], name


def test_predict_takes_defaults_from_the_runs_config_and_flags_win(tmp_path: Path, capsys) -> None:
    from nfaudio.config import Config, dump_config

    run = tmp_path / "run"
    _save_model(run / "best.pt", seed=0)
    cfg = Config()
    cfg.predict.hop, cfg.predict.window, cfg.predict.batch_size = 0.25, 0.5, 3
    dump_config(cfg, run / "config.yaml")
    assert RunDir(run).predict_defaults() == cfg.predict
    assert run_of(run / "best.pt").predict_defaults() == cfg.predict
    assert run_of(tmp_path / "elsewhere.pt").predict_defaults().hop is None
    audio = _write(tmp_path / "audio" / "x.wav", 2.0)

    assert main(["predict", str(run), str(audio), "--out", str(tmp_path / "a"), "--format", "table",
                 "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "a" / "scores.csv")
    np.testing.assert_allclose(table["start_s"][:3], [0.0, 0.25, 0.5])
    np.testing.assert_allclose(table["end_s"] - table["start_s"], 0.5)

    assert main(["predict", str(run / "best.pt"), str(audio), "--out", str(tmp_path / "b"), "--format", "table",
                 "--window", "1.0", "--hop", "1.0", "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "b" / "scores.csv")
    assert list(table["start_s"]) == [0.0, 1.0]
    capsys.readouterr()
