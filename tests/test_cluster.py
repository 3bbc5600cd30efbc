"""Tests for nfaudio.cluster: cluster specs, and folder prediction on real Dask LocalClusters giving the outputs of a
single-process run byte for byte - also when a worker is killed mid-file or the client is killed and rerun."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from conftest import ALL_FORMATS, CLASSES, write_tone

from nfaudio.cli import main
from nfaudio.cluster import connect, parse_spec
from nfaudio.inputs import list_audio
from nfaudio.models import load_model
from nfaudio.predict import Predictor
from nfaudio.predict_run import run_prediction

BATCH, THRESHOLD = 2, 0.2
N_GOOD = 9  # recordings that score; broken.wav and short.wav go to errors.csv
LONG = "sub/long.wav"  # scored first (the largest file) and for long enough to be killed mid-file


# ----------------------------------------------------------------------------- specs (no cluster)
@pytest.mark.parametrize("spec", ["local:0", "local:x", "local", "local:2:3", "http://host:8786", "tcp://host",
                                  "tcp://host:port", "", "nowhere.json"])
def test_a_bad_spec_is_a_value_error_naming_it(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"cluster {spec!r}")), connect(spec):
        pass


def test_the_three_spec_forms(tmp_path: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text("{}")
    assert parse_spec("local:3") == ("local", 3)
    assert parse_spec(" tcp://10.0.0.5:8786 ") == ("address", "tcp://10.0.0.5:8786")
    assert parse_spec("tls://[::1]:8786") == ("address", "tls://[::1]:8786")
    assert parse_spec(str(scheduler_file)) == ("file", scheduler_file)


def test_an_address_where_no_scheduler_answers_is_a_value_error(tmp_path: Path) -> None:
    pytest.importorskip("distributed")  # before config.set: leaving it would drop the defaults an import adds
    import dask

    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text('{"address": "tcp://127.0.0.1:9"}')  # the discard port: nothing listens
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        for spec in ("tcp://127.0.0.1:9", str(scheduler_file)):
            with pytest.raises(ValueError, match=re.escape(f"cluster {spec!r}: no scheduler answers")), connect(spec):
                pass


def test_without_dask_a_cluster_is_an_import_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask.distributed were not installed
    with pytest.raises(ImportError, match=r"pip install 'nfaudio\[dask\]'"), connect("local:1"):
        pass


def test_a_predictor_of_in_memory_models_cannot_go_to_a_cluster(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pred = Predictor(load_model(ckpt), CLASSES, window=1.0, num_workers=0)
    with pytest.raises(ValueError, match="in-memory models"):
        run_prediction(pred, [audio_dir], tmp_path / "out", cluster="local:1", progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- runs on real clusters
@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven tones of 8-20 s, a 10 s FLAC and a 240 s WAV in a subfolder, a corrupt file and one too short to score."""
    root = tmp_path_factory.mktemp("recordings")
    for i in range(7):
        write_tone(root / f"rec{i}.wav", 8.0 + 2.0 * i, seed=i % 3)
    write_tone(root / "sub" / "tone.flac", 10.0, seed=1)
    write_tone(root / LONG, 240.0, seed=2)
    (root / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(2000))
    write_tone(root / "short.wav", 0.2)
    return root


def _key_of(recordings: Path, name: str) -> str:
    """The end of the Dask task key of a file (``nfaudio-<run>-<index in the file list>``)."""
    return f"-{list_audio([recordings]).index(recordings / name)}"


def _args(ckpt: Path, recordings: Path, out: Path) -> list[str]:
    return ["predict", str(ckpt), str(recordings), "--out", str(out), "--format", ",".join(ALL_FORMATS),
            "--threshold", str(THRESHOLD), "--batch-size", str(BATCH), "--threads", "1", "--no-progress"]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".nfaudio" not in p.parts}


def _journaled(out: Path) -> list[str]:
    journal = out / ".nfaudio" / "journal.jsonl"
    return journal.read_text().splitlines() if journal.exists() else []


@pytest.fixture(scope="module")
def reference(ckpt: Path, recordings: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The outputs of the single-process run (one decode process, one torch thread)."""
    out = tmp_path_factory.mktemp("reference")
    assert main(_args(ckpt, recordings, out)) == 1  # 1: some files failed
    snap = _snapshot(out)
    combined = {"submission.csv", "scores.csv", "detections.csv", "raven_selections.txt", "kaleidoscope.csv"}
    assert combined <= set(snap)
    assert len(snap) == len(combined) + 2 * N_GOOD + 1  # + per-file Raven and Audacity tables, errors.csv
    return snap


@pytest.fixture(scope="module")
def dask_client():
    """A LocalCluster of two single-threaded worker processes, and a client of it."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def scheduler_file(dask_client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scheduler file of ``dask_client``'s cluster, as ``dask scheduler --scheduler-file`` writes one."""
    path = tmp_path_factory.mktemp("dask") / "scheduler.json"
    dask_client.write_scheduler_file(str(path))  # once per client
    return path


@pytest.mark.integration
def test_local_cluster_outputs_equal_the_single_process_run(ckpt: Path, recordings: Path, reference: dict,
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("distributed")
    caplog.set_level(logging.INFO, logger="nfaudio.cluster")
    assert main([*_args(ckpt, recordings, tmp_path), "--cluster", "local:2"]) == 1
    assert "Dask cluster local:2: 2 workers, 2 threads" in caplog.text
    assert _snapshot(tmp_path) == reference
    errors = pd.read_csv(tmp_path / "errors.csv")
    assert [Path(f).name for f in errors.file] == ["broken.wav", "short.wav"]  # each once, in input order
    assert len(_journaled(tmp_path)) == N_GOOD


@pytest.mark.integration
def test_connect_reaches_a_running_scheduler_by_address_and_by_scheduler_file(dask_client, scheduler_file: Path
                                                                              ) -> None:
    pids = dask_client.run(os.getpid)
    assert len(pids) == 2
    for spec in (dask_client.scheduler.address, str(scheduler_file)):
        with connect(spec) as client:
            assert client.run(os.getpid) == pids
    assert dask_client.run(os.getpid) == pids  # connecting and closing left the cluster running


@pytest.mark.integration
def test_a_worker_killed_mid_file_loses_nothing(ckpt: Path, recordings: Path, reference: dict, dask_client,
                                                scheduler_file: Path, tmp_path: Path) -> None:
    pids = dask_client.run(os.getpid)
    pred = Predictor.from_checkpoint(ckpt, batch_size=BATCH, threads=1, num_workers=0)
    out = tmp_path / "out"
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_prediction, pred, [recordings], out, formats=ALL_FORMATS, threshold=THRESHOLD,
                          progress=False, cluster=str(scheduler_file))
        deadline = time.monotonic() + 120
        long_key = _key_of(recordings, LONG)
        while True:  # as soon as a worker is seen scoring the long file (scheduled first: the largest), kill it
            assert not run.done(), f"the run ended before a worker was killed: {run.exception()}"
            assert time.monotonic() < deadline, "no worker was seen scoring the long file in time"
            victim = [addr for addr, keys in dask_client.processing().items()
                      if any(str(k).endswith(long_key) for k in keys)]
            if victim:
                os.kill(pids[victim[0]], signal.SIGKILL)
                n_done = len(_journaled(out))
                break
            assert not any(Path(LONG).name in line for line in _journaled(out)), \
                "the long file was done before a worker scoring it was seen"
            time.sleep(0.01)
        summary = run.result(timeout=240)
    assert n_done < N_GOOD, "the kill came after the last file"
    assert (summary.n_scored, summary.n_failed) == (N_GOOD, 2)
    assert pids[victim[0]] not in dask_client.run(os.getpid).values()
    assert len(_journaled(out)) == N_GOOD  # the long file was scored again elsewhere, and journaled once
    assert _snapshot(out) == reference


@pytest.mark.integration
def test_a_killed_client_resumes_with_the_same_command(ckpt: Path, recordings: Path, reference: dict,
                                                       tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    args = [*_args(ckpt, recordings, tmp_path), "--cluster", "local:2"]
    proc = subprocess.Popen([sys.executable, "-m", "nfaudio", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not _journaled(tmp_path):
        assert proc.poll() is None, "the run ended before a file was journaled"
        assert time.monotonic() < deadline, "no file journaled in time"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its LocalCluster
    proc.wait()
    n_done = len(_journaled(tmp_path))
    assert 1 <= n_done < N_GOOD, f"kill came too late ({n_done} of {N_GOOD} files done)"
    assert not (tmp_path / "submission.csv").exists()
    assert main(args) == 1  # the same command resumes
    assert len(_journaled(tmp_path)) == N_GOOD
    assert _snapshot(tmp_path) == reference
