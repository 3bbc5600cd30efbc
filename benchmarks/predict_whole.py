"""Whole-command prediction speed: start-up, model loading / export and scoring together, side by side.

For each backend (torch, onnxruntime, openvino) and each ensemble (the demo-sized 2-fold ensemble of
``nfaudio_small``, 5 s windows, demo frontend; and 5 folds of ``nfaudio_tiny``), runs one fresh Python process
that does what ``nfaudio predict`` does (``Predictor.from_checkpoint(...).predict_to_dir(...)``) on one long
recording, and reports x real time of the process's wall clock:

- ``cold``: the export cache of the checkpoints deleted first (the runtimes export every model, as every run did
  before the cache);
- ``warm``: the cache filled by the cold run;
- ``warm, unshared``: warm, with ``share_frontend=False`` (every member computes its own log-mel).

torch has no export, so its cold and warm runs are the same command (reported once per frontend setting).
Also records the scoring-only rate from the run summary and the modules the process imported (torch / timm).
Writes ``benchmarks/results/predict_whole.json``.

Usage:
    flock /tmp/nfaudio-heavy.lock python benchmarks/predict_whole.py [--minutes 10] [--note "..."]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
model, audio, out, backend, share, threads = sys.argv[1:7]
p = Predictor.from_checkpoint(model, backend=backend, share_frontend=share == "1", threads=int(threads) or None,
                              num_workers=1, batch_size=32)
loaded = time.perf_counter() - t0
summary = p.predict_to_dir([audio], out, formats=["submission"], overwrite=True, progress=False)
print(summary)
print("LOADED", loaded, "MODULES", ",".join(m for m in ("torch", "timm", "librosa", "onnx") if m in sys.modules))
"""


def make_audio(path: Path, minutes: float) -> Path:
    import soundfile as sf

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        n = int(minutes * 60 * SR)
        y = 0.05 * rng.standard_normal(n).astype(np.float32)
        t = np.arange(n) / SR
        y += (0.2 * np.sin(2 * np.pi * 3000 * t) * ((t % 7.0) < 0.8)).astype(np.float32)
        sf.write(path, y, SR, format="FLAC")  # FLAC: libsndfile's OGG writer crashes on long arrays here
    return path


def make_cv(folder: Path, name: str, folds: int, frontend: dict, classes: int = 10) -> Path:
    import torch

    from nfaudio.models import create_model, save_model

    for k in range(folds):
        path = folder / f"fold{k}" / "best.pt"
        if not path.exists():
            torch.manual_seed(k)
            model = create_model(name, classes, head="sed", frontend=frontend)
            save_model(model, path, classes=[f"c{i}" for i in range(classes)], duration=5.0, activation="sigmoid")
    return folder


def run(model: Path, audio: Path, out: Path, backend: str, share: bool, threads: int, audio_s: float) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(model), str(audio), str(out), backend,
                           "1" if share else "0", str(threads)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    match = SUMMARY.search(proc.stdout)
    loaded = re.search(r"LOADED ([\d.]+) MODULES (\S*)", proc.stdout)
    return {"wall_s": round(wall, 2), "xrt_wall": round(audio_s / wall, 1), "scoring_s": float(match.group(1)),
            "xrt_scoring": float(match.group(2)), "start_and_load_s": round(float(loaded.group(1)), 2),
            "modules": loaded.group(2).split(",") if loaded.group(2) else []}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-bench-whole"))
    p.add_argument("--threads", type=int, default=0,
                   help="inference threads (default 0: the thread policy, usable cores minus the 1 decode worker)")
    p.add_argument("--backends", default="torch,onnxruntime,openvino")
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_whole.json")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    audio = make_audio(args.work / "audio" / "long.flac", args.minutes)
    audio_s = args.minutes * 60
    ensembles = {"demo_2fold_nfaudio_small": make_cv(args.work / "demo2", "nfaudio_small", 2, DEMO_FRONTEND),
                 "5fold_nfaudio_tiny": make_cv(args.work / "tiny5", "nfaudio_tiny", 5, DEMO_FRONTEND)}
    runs = []
    for ens, model in ensembles.items():
        for backend in args.backends.split(","):
            try:
                __import__(backend)
            except ImportError:
                runs.append({"ensemble": ens, "backend": backend, "skipped": "not installed"})
                continue
            cases = ([("shared", True, False), ("unshared", False, False)] if backend == "torch" else
                     [("cold", True, True), ("warm", True, False), ("warm, unshared", False, False)])
            for case, share, cold in cases:
                if cold:
                    for cache in model.glob("fold*/.nfaudio-export"):
                        shutil.rmtree(cache)
                print(f"{ens} {backend} {case} ...", file=sys.stderr)
                r = run(model, audio, args.work / "out" / f"{ens}-{backend}-{case}", backend, share, args.threads,
                        audio_s)
                runs.append({"ensemble": ens, "backend": backend, "case": case, **r})
    import onnxruntime
    import torch

    result = {
        "benchmark": "whole-process prediction (start-up + load/export + scoring), one fresh process per run",
        "started_utc": started, "command": " ".join([Path(sys.executable).name, *sys.argv]), "note": args.note,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "usable_cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "loadavg_at_start": [round(x, 2) for x in load_start],
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "data": {"files": 1, "audio_seconds": audio_s, "format": "flac", "sample_rate": SR},
        "settings": {"threads": args.threads, "decode_workers": 1, "batch_size": 32, "window_s": 5.0,
                     "frontend": DEMO_FRONTEND},
        "runs": runs,
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
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
