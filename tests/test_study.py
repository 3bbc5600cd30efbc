"""nfaudio.study: the memory probe, the AGC grid's divergence handling, per-cell resume and the written report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_recipe

from nfaudio.study import agc_study
from nfaudio.study.bn_cost import run_case
from nfaudio.study.framework import Study, cell_key

ROOT = Path(__file__).resolve().parents[1]
FRONTEND = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "fmin": 20.0, "fmax": 4000.0}


def _spec(model: str, batch: int, seconds: float = 1.0) -> dict:
    return {"model": model, "batch_size": batch, "channels_last": False, "samples": int(8000 * seconds),
            "num_classes": 3, "frontend": FRONTEND, "repeats": 1, "device": "cpu", "seed": 0, "threads": 1}


def test_probe_peak_rss_grows_with_batch():
    small, big = run_case(_spec("smallcnn_nf", 2)), run_case(_spec("smallcnn_nf", 256))
    # 256 clips: the saved activations alone are > 100 MB (first conv output: 32 x 16 x 63 floats per clip, x4 more
    # through the rest); each case is a fresh process, so the peaks are the cases' own
    assert big["peak_rss_mb"] - small["peak_rss_mb"] > 50
    assert big["base_rss_mb"] == pytest.approx(small["base_rss_mb"], abs=30)  # same model, same imports


def test_probe_bn_depends_on_mode_and_batch_nf_does_not():
    bn, nf = run_case(_spec("smallcnn_bn", 8, 0.5)), run_case(_spec("smallcnn_nf", 8, 0.5))
    assert nf["train_eval_diff"] == 0.0
    assert nf["batch_dependence"] == 0.0
    assert bn["train_eval_diff"] > 1e-3
    assert bn["batch_dependence"] > 1e-4
    assert bn["params"] > nf["params"]  # BN's affine parameters (conv biases dropped: 2C - C per layer)


def test_agc_huge_lr_without_clipping_is_recorded_as_diverged(tiny_birdclef, tmp_path):
    cfg = tiny_recipe(tiny_birdclef.root, optim={"name": "sgd", "lr": 1e4}, train={"batch_size": 4})
    report = agc_study.run(cfg, tmp_path / "agc", batch_sizes=[4], arms=("none",), epochs=1, max_steps=2)
    rows = json.loads((tmp_path / "agc" / "results.json").read_text())
    assert len(rows) == 1
    assert rows[0]["status"] == "ok"
    assert rows[0]["diverged"] is True
    assert rows[0]["lr"] == pytest.approx(1e4)
    assert rows[0]["seed"] == cfg.train.seed
    assert "torch" in rows[0]
    assert "| none | div |" in report.read_text()
    assert (tmp_path / "agc" / "agc_heatmap.png").stat().st_size > 1000


def test_agc_cell_config_scales_lr_and_sets_the_arm(tiny_birdclef):
    cfg = tiny_recipe(tiny_birdclef.root, optim={"lr": 0.1}, train={"batch_size": 16})
    c = agc_study.cell_config(cfg, {"arm": "clip_norm", "clip": 0.5, "batch_size": 64}, 16, 1, 3)
    assert c.optim.lr == pytest.approx(0.4)
    assert c.optim.agc is False
    assert c.optim.clip_grad_norm == 0.5
    assert c.train.batch_size == 64
    assert c.train.max_steps_per_epoch == 3
    c = agc_study.cell_config(cfg, {"arm": "agc", "clip": 0.04, "batch_size": 8}, 16, 1, 3)
    assert c.optim.lr == pytest.approx(0.05)
    assert c.optim.agc is True
    assert c.optim.agc_clip == 0.04
    assert c.optim.clip_grad_norm is None


def test_framework_skips_finished_cells_and_retries_failed(tmp_path):
    calls = []

    def measure(cell):
        calls.append(cell["x"])
        return {"status": "failed" if cell["x"] == 2 and len(calls) < 4 else "ok", "y": cell["x"] ** 2}

    cells = [{"x": i} for i in range(3)]
    Study("s", tmp_path).run(cells, measure)
    rows = Study("s", tmp_path).run(cells, measure)
    assert calls == [0, 1, 2, 2]  # the second run only retried the failed cell
    assert [r["y"] for r in rows] == [0, 1, 4]
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert [r["cell"] for r in rows] == [cell_key(c) for c in cells]


_GRID_SCRIPT = """
import sys, time
from nfaudio.study.framework import Study

def measure(cell):
    time.sleep(0.3)
    return {"status": "ok", "y": cell["x"] * 10 + 1}

Study("s", sys.argv[1], seed=7).run([{"x": i} for i in range(8)], measure)
"""


def _grid(out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _GRID_SCRIPT, str(out)], env=env)


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "cell_seconds"} for r in rows]


def test_study_killed_by_pid_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out, ref = tmp_path / "killed", tmp_path / "ref"
    proc = _grid(out, env)
    results = out / "results.json"
    deadline = time.time() + 60
    while time.time() < deadline and not (results.exists() and len(json.loads(results.read_text())) >= 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads(results.read_text())
    assert 3 <= len(before) < 8, "the study was not killed mid-grid"
    assert _grid(out, env).wait() == 0
    assert _grid(ref, env).wait() == 0
    after = json.loads(results.read_text())
    assert after[:len(before)] == before  # finished cells untouched, timings included
    assert _stable(after) == _stable(json.loads((ref / "results.json").read_text()))
    assert len((out / "results.csv").read_text().splitlines()) == 9


@pytest.mark.slow
def test_bn_cost_killed_mid_grid_resumes_without_redoing_cells(tmp_path):
    out = tmp_path / "bn"
    cmd = [sys.executable, "-m", "nfaudio", "study", "bn-cost", "--recipe", "fsdd", "--set", "audio.duration=0.25",
           "--out", str(out), "--models", "smallcnn_bn,smallcnn_nf", "--batch-sizes", "2,4,8", "--repeats", "1",
           "--no-channels-last"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (results.exists() and len(json.loads(results.read_text())) >= 2):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads(results.read_text())
    assert 2 <= len(before) < 6, "the study was not killed mid-grid"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    after = json.loads(results.read_text())
    assert after[:len(before)] == before  # finished cells untouched
    assert sorted(r["cell"] for r in after) == sorted({r["cell"] for r in after})  # each cell once
    assert {(r["model"], r["batch_size"]) for r in after} == {(m, b) for m in ("smallcnn_bn", "smallcnn_nf")
                                                                for b in (2, 4, 8)}
    assert all(r["status"] == "ok" for r in after)
    report = (out / "report.md").read_text()
    assert "smallcnn_bn / smallcnn_nf" in report
    assert "| 8 |" in report
    for png in ("train_time.png", "infer_time.png", "memory.png"):
        assert (out / png).stat().st_size > 1000


def test_trainer_clip_grad_norm_bounds_the_first_update(tiny_birdclef, tmp_path):
    """optim.clip_grad_norm: one SGD step (no weight decay, Nesterov 0.9) moves no weight by more than
    lr * (1 + 0.9) * max_norm (the clipped global gradient norm bounds every element)."""
    import numpy as np

    from nfaudio.data import load_data, split_train_val
    from nfaudio.rundir import RunDir
    from nfaudio.training.build import build_model
    from nfaudio.training.state import seed_everything
    from nfaudio.training.trainer import fit

    lr, max_norm = 1.0, 1e-6
    cfg = tiny_recipe(tiny_birdclef.root, optim={"name": "sgd", "lr": lr, "weight_decay": 0.0, "agc": False,
                                                 "clip_grad_norm": max_norm},
                      schedule={"warmup_epochs": 0.0}, train={"epochs": 1, "max_steps_per_epoch": 1, "val_fold": 0})
    manifest = load_data(cfg)
    train_set, val_set = split_train_val(cfg, manifest, np.arange(len(manifest.df)) % 3)
    seed_everything(cfg.train.seed)
    start = build_model(cfg, len(train_set.classes)).state_dict()
    fit(cfg, train_set, val_set, tmp_path / "run")
    end = RunDir(tmp_path / "run").load_state(map_location="cpu")["model"]
    moved = max(float((end[k].float() - start[k].float()).abs().max()) for k in start if start[k].is_floating_point()
                and "running" not in k)
    assert 0 < moved <= lr * 1.9 * max_norm * 1.001
