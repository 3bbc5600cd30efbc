"""Tests for nfaudio.predict_run: the journalled prediction run - parquet tables, crash-safe resume (including a
kill -9 of the CLI), refusing other settings, and one run per output folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ALL_FORMATS, write_tone

from nfaudio.cli import main
from nfaudio.predict import Predictor
from nfaudio.predict_run import Journal, RunConflictError, run_prediction

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_parquet_table(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    pred = Predictor.from_checkpoint(ckpt, num_workers=0)
    run_prediction(pred, [audio_dir], tmp_path, formats=["table"], table_format="parquet", progress=False)
    table = pd.read_parquet(tmp_path / "scores.parquet")
    pd.testing.assert_frame_equal(table.set_index(["file", "start_s", "end_s"]), pred.predict([audio_dir]))


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
        write_tone(data / f"rec{i:02d}.wav", 20.0, seed=i % 3)
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
    assert len(snap) == 5 + 2 * 12 + 1  # combined outputs, per-file Raven and Audacity tables, errors.csv
    for name in clean:
        assert snap[name] == clean[name], name


def test_recording_a_file_costs_one_appended_line_and_one_part_however_many_are_done(tmp_path: Path) -> None:
    """The journal's per-file cost does not grow with the files done: each record appends exactly its own line
    (nothing rewritten or re-read) and writes one part; a reopened journal holds every entry."""
    import numpy as np

    from nfaudio.formats import FileResult

    root = tmp_path / ".nfaudio"
    journal = Journal(root, {"run": 1})
    path = root / "journal.jsonl"
    growth = []
    for i in range(300):
        res = FileResult(path=Path(f"f{i}.wav"), index=i, starts=np.arange(3.0), ends=np.arange(3.0) + 5,
                         scores=np.full((3, 2), i / 300, np.float32), duration=15.0)
        before = path.stat().st_size
        journal.record(f"/data/f{i}.wav", res)
        line = json.dumps(journal.done[f"/data/f{i}.wav"], sort_keys=True) + "\n"
        growth.append(path.stat().st_size - before - len(line))
    journal.close()
    assert growth == [0] * 300  # the 300th record wrote no more than its own line, like the first
    assert len(list((root / "parts").iterdir())) == 300
    reopened = Journal(root, {"run": 1})
    assert len(reopened.done) == 300
    starts, ends, scores = reopened.load("/data/f299.wav")
    assert scores[0, 0] == np.float32(299 / 300)
    reopened.close()
