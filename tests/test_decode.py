"""Tests for nfaudio.decode: decode worker processes give what inline decoding gives, and a worker that dies
fails only the file it was on."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SCORE_SR

from nfaudio.audio import frame_windows, load
from nfaudio.decode import DecodeSpec, iter_decoded
from nfaudio.inputs import list_audio
from nfaudio.predict import Predictor

SR = SCORE_SR

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _by_file(messages: list[tuple[int, str, object]]) -> dict[int, list[tuple[str, object]]]:
    out: dict[int, list[tuple[str, object]]] = {}
    for idx, kind, payload in messages:
        out.setdefault(idx, []).append((kind, payload))
    return out


@pytest.mark.parametrize("shifts", [(0,), (0, -SR // 2, SR // 2)], ids=["plain", "tta"])
def test_worker_output_equals_inline_output(audio_dir: Path, tmp_path: Path, shifts: tuple[int, ...]) -> None:
    (tmp_path / "text.wav").write_text("hello, not audio")
    files = [*list_audio([audio_dir]), tmp_path / "text.wav"]  # rec_a.wav, rec_b.flac, sub/rec_c.ogg, text.wav
    spec = DecodeSpec(sample_rate=SR, window=1.0, hop=1.0, last="pad", shifts=shifts, chunk=2, min_duration=0.0)
    inline = list(iter_decoded(files, spec, num_workers=0))
    pooled = list(iter_decoded(files, spec, num_workers=2))
    assert [idx for idx, _, _ in inline] == sorted(idx for idx, _, _ in inline)  # inline: one file after another
    mine, theirs = _by_file(inline), _by_file(pooled)
    assert sorted(mine) == sorted(theirs) == [0, 1, 2, 3]
    for idx, messages in mine.items():
        assert [kind for kind, _ in theirs[idx]] == [kind for kind, _ in messages], files[idx]
        for (kind, ours), (_, other) in zip(messages, theirs[idx]):
            if kind == "chunk":  # (starts, ends, waves), in order
                for a, b in zip(ours, other):
                    np.testing.assert_array_equal(a, b)
            else:
                assert ours == other
    # the reference for rec_a.wav (3.5 s, no resampling): two chunks of two 1 s windows, the last zero-padded
    chunks = [payload for kind, payload in mine[0] if kind == "chunk"]
    assert [len(starts) for starts, _, _ in chunks] == [2, 2]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), [1.0, 2.0, 3.0, 4.0])
    waves = np.concatenate([c[2] for c in chunks]).reshape(4, len(shifts), SR)  # shifted copies of a window together
    np.testing.assert_array_equal(waves[:, 0], frame_windows(load(files[0], SR)[0], SR, SR, "pad"))
    assert mine[0][-1] == ("done", pytest.approx(3.5))
    [(kind, (reason, _))] = mine[3]
    assert kind == "error"
    assert "not readable" in reason


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the patch reaches workers through fork")
def test_a_hanging_decoder_is_killed_and_fails_only_its_file(ckpt: Path, audio_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import nfaudio.decode as decode_module

    normal = Predictor.from_checkpoint(ckpt, num_workers=1).predict_to_dir([audio_dir], tmp_path / "normal")
    assert normal.n_failed == 0
    original = decode_module._file_messages
    pid_file = tmp_path / "stuck.pid"

    def hang_on_b(idx, path, spec):  # runs in the forked decode worker
        messages = original(idx, path, spec)
        if path.stem == "rec_b":
            yield next(messages)  # the header: rec_b lasts 2 s, so its timeout is 1 + 0.5 * 2 = 2 s
            pid_file.write_text(str(os.getpid()))
            while True:
                time.sleep(60)
        yield from messages

    monkeypatch.setattr(decode_module, "_file_messages", hang_on_b)
    pred = Predictor.from_checkpoint(ckpt, num_workers=1, decode_timeout=1.0, decode_timeout_factor=0.5)
    began = time.monotonic()
    summary = pred.predict_to_dir([audio_dir], tmp_path / "stuck")
    assert time.monotonic() - began < 30
    assert summary.n_failed == 1
    errors = pd.read_csv(tmp_path / "stuck" / "errors.csv")
    assert [Path(f).stem for f in errors.file] == ["rec_b"]
    assert list(errors.reason) == ["decoder timed out after 2 s"]
    ours = pd.read_csv(tmp_path / "stuck" / "scores.csv")
    theirs = pd.read_csv(tmp_path / "normal" / "scores.csv")
    theirs = theirs[~theirs.file.str.contains("rec_b")].reset_index(drop=True)
    assert set(ours.file.map(lambda f: Path(f).stem)) == {"rec_a", "rec_c"}
    pd.testing.assert_frame_equal(ours, theirs)
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(int(pid_file.read_text()), 0)


def test_time_spent_scoring_does_not_count_towards_the_timeout(audio_dir: Path) -> None:
    import time

    files = list_audio([audio_dir])[:2]  # rec_a.wav, rec_b.flac: one chunk and "done" each
    spec = DecodeSpec(sample_rate=SR, window=1.0, hop=1.0, last="pad", shifts=(0,), chunk=8, min_duration=0.0)
    kinds = []
    for _, kind, _ in iter_decoded(files, spec, num_workers=1, timeout=1.0):
        kinds.append(kind)
        time.sleep(2.0)  # a slow model: the worker meanwhile blocks on its send, which is no hang
    assert kinds == ["chunk", "done", "chunk", "done"]


def test_negative_timeouts_are_rejected(audio_dir: Path) -> None:
    spec = DecodeSpec(sample_rate=SR, window=1.0, hop=1.0, last="pad", shifts=(0,), chunk=8, min_duration=0.0)
    with pytest.raises(ValueError, match="timeout"):
        list(iter_decoded(list_audio([audio_dir]), spec, num_workers=1, timeout=-1.0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers fork and read WORKER_NICE there")
@pytest.mark.parametrize("increment", [19, 5, 0])
def test_decode_workers_lower_their_priority_by_worker_nice(audio_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                            increment: int) -> None:
    """The model's threads get the cores first: a worker runs WORKER_NICE steps below its parent (0: level)."""
    import multiprocessing as mp

    from nfaudio import decode

    monkeypatch.setattr(decode, "WORKER_NICE", increment)
    spec = DecodeSpec(sample_rate=SR, window=1.0, hop=1.0, last="pad", shifts=(0,), chunk=1, min_duration=0.0)
    parent = os.getpriority(os.PRIO_PROCESS, 0)
    messages = iter_decoded(list_audio([audio_dir]), spec, num_workers=1)
    first = next(messages)  # the worker has started and sent a window: its priority is set
    (worker,) = [p for p in mp.active_children() if p.name == "nfaudio-decode"]
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == min(19, parent + increment)
    assert os.getpriority(os.PRIO_PROCESS, 0) == parent  # the caller's own priority is untouched
    rest = [first, *messages]
    assert [kind for _, kind, _ in rest].count("done") == 3  # and it decodes every file all the same
