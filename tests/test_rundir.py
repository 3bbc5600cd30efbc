"""Tests for nfaudio.rundir: the files of a run directory, config and run info, folds, training state, which
checkpoints a path holds, and the prediction defaults a run gives."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

import nfaudio
from nfaudio.config import Config, dump_config
from nfaudio.rundir import RunDir, find_checkpoints, run_of


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_layout_names(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert not run.path.exists()  # naming files creates nothing
    assert os.fspath(run) == str(tmp_path / "run")
    assert run.best == tmp_path / "run" / "best.pt"
    assert run.last == tmp_path / "run" / "last.pt"
    assert {name: run.file(getattr(RunDir, name)).name for name in
            ("CONFIG", "INFO", "FOLDS", "HISTORY", "CURVES", "OOF", "METRICS", "DONE")} == {
        "CONFIG": "config.yaml", "INFO": "run.json", "FOLDS": "folds.csv", "HISTORY": "history.csv",
        "CURVES": "curves.png", "OOF": "oof.csv", "METRICS": "metrics.json", "DONE": "done.json"}
    assert run.fold(3).path == tmp_path / "run" / "fold3"
    assert run.fold(3).best == tmp_path / "run" / "fold3" / "best.pt"
    assert run.full.path == tmp_path / "run" / "full"
    assert not run.path.exists()
    assert run.create() is run
    assert run.path.is_dir()


def test_write_info_then_read_config_round_trips(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "new" / "run")
    assert run.read_config() is None
    assert run.read_info() == {}
    cfg = Config()
    cfg.data.root = str(tmp_path / "data")
    cfg.train.seed, cfg.optim.lr, cfg.predict.hop = 11, 0.003, 2.5
    run.write_info(cfg, seed=11, classes=["a", "b"])
    assert run.read_config() == cfg
    info = run.read_info()
    assert info == json.loads(run.file(RunDir.INFO).read_text())
    assert (info["nfaudio_version"], info["seed"], info["classes"]) == (nfaudio.__version__, 11, ["a", "b"])
    assert "git_commit" in info


def test_folds_round_trip_in_the_order_asked(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.read_folds(["a"]) is None
    table = pd.DataFrame({"row_id": ["007", "b/x", "c"], "primary_label": ["p", "q", "p"], "fold": [2, 0, 1]})
    run.write_folds(table)
    pd.testing.assert_frame_equal(pd.read_csv(run.file(RunDir.FOLDS), dtype={"row_id": str}), table)
    assert run.read_folds(["c", "007", "b/x"]) == [1, 2, 0]  # "007" stays a string, not the number 7
    with pytest.raises(ValueError, match=r"lacks 2 row ids of the data \(e\.g\. \['7', 'd'\]\)"):
        run.read_folds(["c", "d", "7"])


def test_folds_trained_are_numeric_and_need_a_best_checkpoint(tmp_path: Path) -> None:
    for name in ("fold10", "fold2", "fold0"):
        _touch(tmp_path / name / "best.pt")
    _touch(tmp_path / "fold3" / "last.pt")  # unfinished: no best.pt
    _touch(tmp_path / "foldx" / "best.pt")
    _touch(tmp_path / "fold4.bak" / "best.pt")
    assert RunDir(tmp_path).folds_trained() == [0, 2, 10]  # 2 before 10
    assert find_checkpoints(tmp_path) == [tmp_path / f"fold{k}" / "best.pt" for k in (0, 2, 10)]


def test_save_and_load_state(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.load_state() is None
    run.save_state({"epoch": 3, "weights": torch.arange(4.0), "history": [{"loss": 0.5}]})
    state = run.load_state()
    assert state["epoch"] == 3
    assert torch.equal(state["weights"], torch.arange(4.0))
    assert state["history"] == [{"loss": 0.5}]


def test_find_checkpoints_file_run_and_cv(cv_dir: Path, tmp_path: Path) -> None:
    assert find_checkpoints(cv_dir / "fold0" / "best.pt") == [cv_dir / "fold0" / "best.pt"]
    assert find_checkpoints(cv_dir / "fold1") == [cv_dir / "fold1" / "best.pt"]
    assert find_checkpoints(cv_dir) == [cv_dir / "fold0" / "best.pt", cv_dir / "fold1" / "best.pt"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_checkpoints(tmp_path)


def test_find_checkpoints_onnx_dir_and_what_wins(tmp_path: Path) -> None:
    onnx = tmp_path / "onnx"
    for name in ("fold1.onnx", "fold0.onnx"):
        _touch(onnx / name)
    _touch(onnx / "notes.txt")
    assert find_checkpoints(onnx) == [onnx / "fold0.onnx", onnx / "fold1.onnx"]
    assert find_checkpoints(onnx / "fold1.onnx") == [onnx / "fold1.onnx"]
    both = tmp_path / "both"  # a run's own best.pt wins over fold runs inside it
    _touch(both / "best.pt")
    _touch(both / "fold0" / "best.pt")
    assert find_checkpoints(both) == [both / "best.pt"]
    assert RunDir(both).checkpoints() == [both / "best.pt"]
    with pytest.raises(FileNotFoundError) as exc:
        find_checkpoints(tmp_path / "empty")
    assert str(exc.value).startswith(f"{tmp_path / 'empty'}: no checkpoint")


def test_predict_defaults_from_the_runs_config_else_the_built_in_ones(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    cfg = Config()
    cfg.predict.hop, cfg.predict.window, cfg.predict.batch_size = 0.25, 0.5, 3
    dump_config(cfg, run / "config.yaml")
    assert RunDir(run).predict_defaults() == cfg.predict
    assert run_of(run / "best.pt").predict_defaults() == cfg.predict
    assert run_of(run).path == run
    assert run_of(tmp_path / "elsewhere.pt").predict_defaults().hop is None
    assert RunDir(tmp_path / "elsewhere").predict_defaults() == Config().predict
    (run / "config.yaml").write_text("predict:\n  hopp: 1.0\n")  # unreadable: warned about, then the defaults
    with caplog.at_level(logging.WARNING, logger="nfaudio.rundir"):
        assert RunDir(run).predict_defaults() == Config().predict
    assert "ignoring the predict settings" in caplog.text
