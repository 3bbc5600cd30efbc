"""Tests for benchmarks/: the scale and index benchmarks at a tiny size (JSON keys, the kill -9 resume comparison,
exact methods agreeing), and benchmarks/gpu.py on a machine without CUDA (says so, exits 0, writes nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_scale_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--short", "30", "--long", "2",
                    "--long-seconds", "20", "--long-distinct", "1", "--kills", "1", "--work", str(tmp_path / "w"),
                    "--out", str(out)], check=True, env=env, cwd=ROOT, capture_output=True, timeout=280)
    result = json.loads(out.read_text())
    assert {"command", "machine", "data", "model", "settings", "sets"} <= set(result)
    assert os.stat(tmp_path / "w" / "long2x20" / "long_000.wav").st_ino == os.stat(
        tmp_path / "w" / "long2x20" / "long_001.wav").st_ino  # one file on disk under two names
    for name, n in (("short", 30), ("long", 2)):
        s = result["sets"][name]
        assert s["files"] == n
        assert f"{n}/{n} files scored" in s["summary"]  # hard links count as distinct files
        for key in ("time_per_file_ms_first_10pct", "time_per_file_ms_last_10pct", "rss_mib", "xrt_wall"):
            assert key in s
        kr = s["kill_resume"]
        assert kr["byte_identical"] is True
        assert kr["different"] == []
        assert {"submission.csv", "scores.csv", "errors.csv"} <= set(kr["files_compared"])
        assert kr["final_run_rc"] == 0
    assert result["sets"]["short"]["rss_mib"]["command_peak"] > 0


def test_machine_info_of_every_benchmark(monkeypatch) -> None:
    import importlib

    import numpy as np

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    machine = importlib.import_module("machine")
    info = machine.machine_info("numpy", "nfaudio_no_such_package")
    assert (info["numpy"], info["nfaudio_no_such_package"]) == (np.__version__, None)
    assert 1 <= info["usable_cpus"] <= info["logical_cpus"] == os.cpu_count()
    assert info["memory_gib"] > 0
    assert info["cpu"] == machine.cpu_model()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        if names:
            assert info["cpu"] == names[0]


def test_gpu_benchmark_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--work", str(tmp_path / "w"),
                           "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "needs CUDA" in proc.stderr
    assert not out.exists()
    assert not (tmp_path / "w").exists()  # nothing made either


@pytest.mark.integration
def test_gpu_benchmark_smoke_on_cpu_runs_every_part(tmp_path: Path) -> None:
    """``--device cpu`` runs every part's code (trainer, step loops, frontend, predict, torchrun DDP with gloo), so a
    GPU session does not meet a broken script; timm's test_nfnet keeps it to seconds."""
    out, work = tmp_path / "gpu.json", tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--model",
                           "test_nfnet", "--clips", "20", "--classes", "2", "--epochs", "1", "--batch-size", "4",
                           "--workers", "0", "--steps", "2", "--warmup", "1", "--predict-minutes", "0.1",
                           "--work", str(work), "--out", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True
    assert result["device"] == "cpu"
    parts = result["parts"]
    assert set(parts) == {"trainer", "step_loops", "frontend", "predict", "ddp"}
    assert [name for name, part in parts.items() if "error" in part or "skipped" in part] == []
    trainer = parts["trainer"]
    assert len(trainer["clips_per_s_per_epoch"]) == 1
    assert Path(trainer["best_pt"]).is_file()
    assert trainer["last_epoch_over_bare"] > 0
    loops = parts["step_loops"]
    assert loops["amp"] is False  # the trainer's rule: AMP on CUDA only
    assert loops["nfaudio_over_bare"] == pytest.approx(
        loops["nfaudio_step_clips_per_s"] / loops["bare_timm_clips_per_s"], abs=0.01)
    assert parts["frontend"]["max_abs_diff_cpu_vs_cpu"] == 0.0
    predict = parts["predict"]
    assert predict["cpu_windows"] == 2  # 6 s in 5 s windows, the last one padded
    assert predict["max_abs_prob_diff_cpu_vs_cpu"] == 0.0
    ddp = parts["ddp"]
    assert (ddp["rc"], ddp["processes"], ddp["backend"]) == (0, 2, "gloo")
    assert len(ddp["clips_per_s_per_epoch"]) == 2
    assert (work / "ddp" / "best.pt").is_file()


def test_gpu_benchmark_exits_1_when_a_part_fails(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--parts",
                           "nonsense", "--clips", "2", "--classes", "1", "--work", str(tmp_path / "w"),
                           "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "failed parts: nonsense" in proc.stderr
    assert json.loads(out.read_text())["parts"] == {"nonsense": {"error": "unknown part"}}


@pytest.mark.integration
def test_index_benchmark_tiny(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    pytest.importorskip("pyarrow")
    out, work = tmp_path / "res" / "index.json", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "index.py"), "--rows", "2000", "--dim", "16",
                    "--clusters", "20", "--queries", "12", "--work", str(work), "--out", str(out)],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=280)
    result = json.loads(out.read_text())
    assert {"command", "machine", "data", "settings", "methods"} <= set(result)
    assert result["data"]["rows"] == 2000
    assert set(result["methods"]) | set(result["skipped"]) == {"numpy", "flat", "hnsw", "ivf", "usearch"}
    assert set(result["methods"]) >= {"numpy", "flat", "hnsw", "ivf"}  # only usearch (optional) may be skipped
    for name, m in result["methods"].items():
        assert {"build_s", "query_ms_mean", "table_ms_mean", "peak_rss_mib", "recall_at_10"} <= set(m), name
        assert m["self_first"] == 1.0  # every query window finds itself first
    assert result["methods"]["flat"]["recall_at_10"] == 1.0  # exact, as numpy
    assert result["methods"]["ivf"]["params"]["nlist"] == 2000 // 39  # 4 sqrt(2000) = 179 capped at rows / 39
    assert not list(work.iterdir())  # the store lived in a temporary folder under --work, removed
