"""Folder prediction on a local Dask cluster against the plain single-process run, on the same cores.

Generates N one-minute OGG files at 32 kHz (noise + chirps, written in 10 s blocks: one long soundfile.write of
OGG can crash libsndfile), saves a randomly initialised nfaudio_small with the SED head (182 classes, 5 s windows),
then runs the same ``nfaudio predict`` command, side by side and with the same total cores C (the usable cores):

* ``plain``: one process, decoding inline, C torch threads (``--workers 0 --threads C``);
* ``plain-default``: one decode process and C - 1 torch threads (the default thread policy);
* ``dask-local1``: ``--cluster local:1 --threads C`` (one worker process doing what ``plain`` does);
* ``dask-localC``: ``--cluster local:C --threads 1`` (C single-threaded worker processes).

Each run is repeated (``--repeats``) and the fastest kept. Reports x-real-time two ways: the run's own rate (from
the summary line: cluster start-up, scoring, outputs) and wall clock for the whole command (Python start-up and
model load included); the Dask overhead is ``dask-local1`` against ``plain`` (the same work in a worker instead of
in the client). Writes ``benchmarks/results/cluster.json`` with machine info and load averages.

Usage:
    python benchmarks/cluster.py [--files 20] [--minutes 1] [--repeats 2] [--work /tmp/nfaudio-bench-cluster]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import machine
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 32000
N_CLASSES = 182
BLOCK_S = 10
SUMMARY = re.compile(r"in ([\d.]+) s \(([\d.]+)x real time\)")


def machine_info() -> dict:
    return machine.machine_info("torch", "dask", "distributed")


def make_data(folder: Path, files: int, minutes: float, seed: int = 0) -> list[Path]:
    """Pink-ish noise with random chirps, as OGG Vorbis at 32 kHz, written block by block."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * SR)
    paths = []
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
            call = 0.2 * np.sin(2 * np.pi * (rng.uniform(1500, 8000) * t + rng.uniform(-2000, 2000) * t * t))
            y[start:start + len(t)] += (call * np.hanning(len(t)))[: n - start].astype(np.float32)
        tmp = path.with_suffix(".tmp.ogg")
        with sf.SoundFile(tmp, "w", SR, 1, format="OGG", subtype="VORBIS") as fh:
            for b in range(0, n, BLOCK_S * SR):
                fh.write(np.clip(y[b:b + BLOCK_S * SR], -1, 1))
        tmp.rename(path)
    return paths


def make_model(path: Path) -> Path:
    import torch

    from nfaudio.models import create_model, save_model

    if not path.exists():
        torch.manual_seed(0)
        model = create_model("nfaudio_small", N_CLASSES, head="sed")
        save_model(model, path, classes=[f"species_{i:03d}" for i in range(N_CLASSES)], duration=5.0,
                   activation="sigmoid")
    return path


def run_predict(name: str, model: Path, audio: Path, out: Path, extra: list[str], batch_size: int) -> dict:
    cmd = [sys.executable, "-m", "nfaudio", "-q", "predict", str(model), str(audio), "--out", str(out),
           "--format", "submission", "--overwrite", "--no-progress", "--batch-size", str(batch_size), *extra]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return {"run": name, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    scoring_s = float(SUMMARY.search(proc.stdout).group(1))
    return {"run": name, "command": " ".join(["nfaudio", *cmd[4:]]), "wall_s": round(wall, 2),
            "scoring_s": scoring_s, "loadavg_1min_before": round(load0, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=2, help="runs of each configuration; the fastest is kept")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), help="total cores of every run")
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-bench-cluster"))
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cluster.json")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    make_data(args.work / "audio", args.files, args.minutes)
    audio_s = args.files * args.minutes * 60
    model = make_model(args.work / "nfaudio_small_sed.pt")
    c = args.cores
    configs = {"plain": ["--workers", "0", "--threads", str(c)],
               "plain-default": ["--workers", "1", "--threads", str(max(1, c - 1))],
               "dask-local1": ["--cluster", "local:1", "--threads", str(c)],
               f"dask-local{c}": ["--cluster", f"local:{c}", "--threads", "1"]}
    runs = []
    for name, extra in configs.items():
        tries = []
        for k in range(args.repeats):  # interleaving would mix page-cache effects into the order; files are cached
            print(f"running {name} ({k + 1}/{args.repeats}) ...", file=sys.stderr)
            tries.append(run_predict(name, model, args.work / "audio", args.work / f"out-{name}", extra,
                                     args.batch_size))
        ok = [t for t in tries if "wall_s" in t]
        best = min(ok, key=lambda t: t["wall_s"]) if ok else tries[-1]
        runs.append({**best, "wall_s_all": [t.get("wall_s") for t in tries],
                     "scoring_s_all": [t.get("scoring_s") for t in tries]})
    import pandas as pd

    ref = pd.read_csv(args.work / "out-plain" / "submission.csv").set_index("row_id")
    by_name = {r["run"]: r for r in runs}
    for r in runs:
        if "wall_s" not in r:
            continue
        r["xrt_scoring"] = round(audio_s / r["scoring_s"], 1)
        r["xrt_wall"] = round(audio_s / r["wall_s"], 1)
        got = pd.read_csv(args.work / f"out-{r['run']}" / "submission.csv").set_index("row_id")
        r["max_abs_prob_diff_vs_plain"] = float(np.abs(got.loc[ref.index].to_numpy() - ref.to_numpy()).max())
    plain, local1 = by_name["plain"], by_name["dask-local1"]
    overhead = {}
    if "wall_s" in plain and "wall_s" in local1:
        for kind in ("wall", "scoring"):
            a, b = plain[f"{kind}_s"], local1[f"{kind}_s"]
            overhead.update({f"{kind}_s": round(b - a, 2), f"{kind}_pct": round(100 * (b / a - 1), 1)})
    result = {
        "benchmark": "nfaudio predict on a local Dask cluster vs one process, same total cores",
        "started_utc": started, "command": " ".join(sys.argv),
        "machine": {**machine_info(), "loadavg_at_start": [round(x, 2) for x in load_start],
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "note": args.note,
        "data": {"files": args.files, "minutes_each": args.minutes, "audio_seconds": audio_s, "format": "ogg vorbis",
                 "sample_rate": SR},
        "model": {"name": "nfaudio_small", "head": "sed", "classes": N_CLASSES, "window_s": 5.0,
                  "weights": "random init", "frontend": "LogMel defaults (n_fft 2048, hop 512, 128 mels)"},
        "settings": {"batch_size": args.batch_size, "total_cores": c, "repeats": args.repeats,
                     "kept": "fastest wall clock of the repeats"},
        "runs": runs, "dask_overhead_local1_vs_plain": overhead,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r['run']:>14}: " + (f"{r['xrt_scoring']:6.1f}x real time scoring, {r['xrt_wall']:6.1f}x wall "
                                      f"({r['wall_s']:.1f} s)" if "xrt_scoring" in r else str(r.get("error"))))
    if overhead:
        print(f"Dask overhead (local:1 vs plain): {overhead['wall_s']:+.2f} s wall ({overhead['wall_pct']:+.1f}%), "
              f"{overhead['scoring_s']:+.2f} s scoring ({overhead['scoring_pct']:+.1f}%)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
