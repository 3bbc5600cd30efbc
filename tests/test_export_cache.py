"""Tests for nfaudio.export_cache: an entry is built once next to the checkpoint and reused, a changed checkpoint
gets a new entry (the old one removed), a read-only folder falls back to the user cache, two processes build an
entry once, and a warm onnxruntime prediction imports neither torch nor timm nor librosa."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli_loaded_modules, save_tiny_model

from nfaudio import export_cache
from nfaudio.export_cache import CACHE_DIR_NAME, cached_export, checkpoint_digest
from nfaudio.predict import Predictor

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture
def model_dir(ckpt: Path, tmp_path: Path) -> Path:
    """A run directory of our own holding a copy of ``ckpt`` as best.pt."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ckpt, run / "best.pt")
    return run


def _no_export(*args, **kwargs):
    raise AssertionError("exported although the cache holds the entry")


def test_the_second_run_reuses_the_entry_and_scores_equal_torch(model_dir: Path, audio_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ref = Predictor.from_checkpoint(model_dir, num_workers=0, batch_size=4).predict([audio_dir])
    first = cached_export(model_dir / "best.pt")
    assert first.built
    digest = checkpoint_digest(model_dir / "best.pt")
    assert first.folder.parent == model_dir / CACHE_DIR_NAME
    assert first.folder.name.startswith(f"best-{digest}-")
    assert sorted(p.name for p in first.folder.iterdir()) == ["body.onnx", "frontend.onnx", "meta.json"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.folder.iterdir()}
    import nfaudio.export

    monkeypatch.setattr(nfaudio.export, "export_parts", _no_export)
    again = cached_export(model_dir / "best.pt")
    assert not again.built
    assert again.folder == first.folder
    assert {p.name: p.stat().st_mtime_ns for p in again.folder.iterdir()} == mtimes
    assert again.meta["classes"] == ref.columns.tolist()
    got = Predictor.from_checkpoint(model_dir, backend="onnxruntime", num_workers=0, batch_size=4,
                                    threads=1).predict([audio_dir])
    pd.testing.assert_index_equal(got.index, ref.index)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), atol=1e-5)


def test_a_changed_checkpoint_is_exported_again_and_its_old_entry_removed(model_dir: Path, audio_dir: Path) -> None:
    old = cached_export(model_dir / "best.pt")
    save_tiny_model(model_dir / "best.pt", seed=7)  # training wrote a new best.pt
    new = cached_export(model_dir / "best.pt")
    assert new.built
    assert new.folder != old.folder
    assert not old.folder.exists()
    assert [p.name for p in (model_dir / CACHE_DIR_NAME).iterdir() if p.is_dir()] == [new.folder.name]
    ref = Predictor.from_checkpoint(model_dir, num_workers=0).predict([audio_dir])
    got = Predictor.from_checkpoint(model_dir, backend="onnxruntime", num_workers=0, threads=1).predict([audio_dir])
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), atol=1e-5)


def test_an_entry_with_a_missing_file_is_rebuilt(model_dir: Path) -> None:
    entry = cached_export(model_dir / "best.pt")
    (entry.folder / "body.onnx").unlink()
    again = cached_export(model_dir / "best.pt")
    assert again.built
    assert again.body.is_file()


def test_an_unwritable_checkpoint_folder_falls_back_to_the_user_cache(model_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    (model_dir / CACHE_DIR_NAME).write_text("")  # a file where the cache folder would go: it cannot be created
    user = tmp_path / "user-cache"
    monkeypatch.setenv("NFAUDIO_CACHE_DIR", str(user))
    with caplog.at_level(logging.WARNING, logger="nfaudio.export_cache"):
        entry = cached_export(model_dir / "best.pt")
    assert entry.built
    assert entry.folder.parent == user
    assert f"{model_dir} is not writable" in caplog.text
    assert not cached_export(model_dir / "best.pt").built  # found there next time


def test_user_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NFAUDIO_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert export_cache.user_cache_dir() == tmp_path / "xdg" / "nfaudio" / "export"
    monkeypatch.setenv("NFAUDIO_CACHE_DIR", str(tmp_path / "mine"))
    assert export_cache.user_cache_dir() == tmp_path / "mine"


def _build(path: str, start, results) -> None:
    start.wait()
    entry = cached_export(path)
    results.put((entry.built, str(entry.folder), json.loads((entry.folder / "meta.json").read_text())["source"]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start method")
def test_two_processes_build_one_entry_once(model_dir: Path) -> None:
    ctx = mp.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(model_dir / "best.pt"), start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(built for built, _, _ in got) == [False, True]  # the lock: the second waited and reused it
    assert len({folder for _, folder, _ in got}) == 1
    leftovers = [p.name for p in (model_dir / CACHE_DIR_NAME).iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_opset_matches_the_exporter() -> None:
    from nfaudio.export import OPSET

    assert export_cache.OPSET == OPSET


def test_a_warm_onnxruntime_prediction_imports_neither_torch_nor_timm(model_dir: Path, audio_dir: Path,
                                                                     tmp_path: Path) -> None:
    from nfaudio.cli import main

    assert main(["-q", "predict", str(model_dir), str(audio_dir), "--out", str(tmp_path / "cold"),
                 "--backend", "onnxruntime", "--threads", "1", "--workers", "0", "--no-progress"]) == 0
    rc, loaded = cli_loaded_modules(["-q", "predict", str(model_dir), str(audio_dir), "--out", str(tmp_path / "warm"),
                                     "--backend", "onnxruntime", "--threads", "1", "--workers", "0", "--no-progress"],
                                    ("torch", "timm", "librosa", "onnx", "nfaudio.models", "nfaudio.export"))
    assert rc == 0
    assert loaded == []
    cold = pd.read_csv(tmp_path / "cold" / "submission.csv")
    warm = pd.read_csv(tmp_path / "warm" / "submission.csv")
    pd.testing.assert_frame_equal(cold, warm)
