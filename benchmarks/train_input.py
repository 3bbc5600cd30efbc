"""Training throughput on compressed audio: the model-only step against the full input pipeline (#14).

Writes N clips at 44.1 kHz (half OGG Vorbis, half MP3, both written by soundfile/libsndfile >= 1.1), ``--seconds``
long (noise + chirps), then measures clips/s of one training epoch (``nfaudio_small``, 5 s crops at the recipe's
32 kHz, batch 16, SGD, AGC) side by side:

* ``model_only``: the same steps on pre-decoded tensors (no DataLoader);
* ``none``: AudioDataset + the trainer's persistent DataLoader (``train_loader``), every crop decoded and resampled
  (the second epoch: workers already running);
* ``disk_cold``: ``data.cache=disk`` on an empty cache folder (the first epoch of a new loader: worker start-up
  plus decoding and writing each file);
* ``disk_warm``: the same loader's second epoch, every file cached (crops read memory-mapped);
* ``memory``: ``data.cache=memory`` (filled before the loader; the fill time is reported apart; second epoch).

Each is repeated ``--repeats`` times (``disk_cold`` on a fresh folder each time) and the median kept. Worker memory
(USS and PSS, psutil) is sampled at the end of each loader epoch. JSON to ``benchmarks/results/train_input.json``.

Usage:
    flock /tmp/nfaudio-heavy.lock python benchmarks/train_input.py [--clips 200] [--seconds 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import soundfile as sf
import torch

from nfaudio.audio.cache import DecodedCache
from nfaudio.config import from_dict
from nfaudio.data import AudioDataset, Manifest
from nfaudio.training.build import build_model, build_optimizer
from nfaudio.training.distributed import World
from nfaudio.training.loader import train_loader
from nfaudio.training.losses import ClipFrameLoss
from nfaudio.training.state import worker_init

ROOT = Path(__file__).resolve().parents[1]
FILE_SR, SR, DURATION, BATCH, CLASSES = 44100, 32000, 5.0, 16, 10


def write_clips(folder: Path, n: int, seconds: float) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(int(seconds * FILE_SR)) / FILE_SR
    for i in range(n):
        fmt = ("OGG", "VORBIS", "ogg") if i % 2 == 0 else ("MP3", "MPEG_LAYER_III", "mp3")
        f0 = rng.uniform(1000, 6000)
        y = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (f0 + 500 * t) * t)
        path = folder / f"c{i:04d}.{fmt[2]}"
        sf.write(path, y.astype(np.float32), FILE_SR, format=fmt[0], subtype=fmt[1])
        rows.append({"path": str(path), "primary_label": f"k{i % CLASSES}", "secondary_labels": [],
                     "row_id": f"c{i:04d}"})
    return pd.DataFrame(rows)


def worker_memory() -> dict[str, float]:
    kids = psutil.Process().children(recursive=True)
    uss, pss = [], []
    for k in kids:
        try:
            m = k.memory_full_info()
            uss.append(m.uss / 2**20)
            pss.append(m.pss / 2**20)
        except (psutil.Error, AttributeError):
            continue
    return {"workers": len(uss), "uss_mib": max(uss, default=0.0), "pss_mib": max(pss, default=0.0)}


def step_fn(cfg):
    torch.manual_seed(0)
    model = build_model(cfg, CLASSES).train()
    opt = build_optimizer(model, cfg)
    loss_fn = ClipFrameLoss("bce", 0.0, 2.0, 0.25)

    def step(wave, target):
        out = model(wave)
        loss = loss_fn(out.clip, out.frame, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def run_loader(cfg, manifest, cache, workers, epochs=1):
    ds = AudioDataset(manifest, sample_rate=SR, duration=DURATION, train=True, seed=0, cache=cache)
    loader, sampler = train_loader(ds, BATCH, 0, World(), None, True, num_workers=workers,
                                   worker_init_fn=worker_init if workers else None)
    step = step_fn(cfg)
    rates, mem = [], {}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        t0, seen = time.perf_counter(), 0
        for wave, target, _, _ in loader:
            step(wave, target)
            seen += len(wave)
        rates.append(seen / (time.perf_counter() - t0))
        mem = worker_memory()
    del loader
    return rates, mem


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_input.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="nfaudio-bench-input-"))
    try:
        (work / "audio").mkdir()
        df = write_clips(work / "audio", args.clips, args.seconds)
        manifest = Manifest(df, sorted(df["primary_label"].unique()))
        cfg = from_dict({"audio": {"sample_rate": SR, "duration": DURATION},
                         "model": {"name": "nfaudio_small", "head": "sed"}, "optim": {"name": "sgd", "lr": 0.01}})
        results: dict[str, list[float]] = {k: [] for k in ("model_only", "none", "disk_cold", "disk_warm", "memory")}
        memory: dict[str, dict] = {}
        fill_s = []
        # model-only: pre-decoded tensors of the same shapes
        ds = AudioDataset(manifest, sample_rate=SR, duration=DURATION, train=True, seed=0)
        waves = torch.stack([ds[i][0] for i in range(min(len(ds), 64))])
        targets = torch.stack([ds[i][1] for i in range(min(len(ds), 64))])
        n_steps = len(ds) // BATCH
        for _ in range(args.repeats):
            step = step_fn(cfg)
            t0 = time.perf_counter()
            for s in range(n_steps):
                j = (s * BATCH) % (len(waves) - BATCH + 1)
                step(waves[j:j + BATCH], targets[j:j + BATCH])
            results["model_only"].append(n_steps * BATCH / (time.perf_counter() - t0))

            rates, memory["none"] = run_loader(cfg, manifest, None, args.workers, epochs=2)
            results["none"].append(rates[1])
            cdir = work / "cache"
            shutil.rmtree(cdir, ignore_errors=True)
            disk = DecodedCache("disk", SR, cdir)
            rates, memory["disk"] = run_loader(cfg, manifest, disk, args.workers, epochs=2)
            results["disk_cold"].append(rates[0])
            results["disk_warm"].append(rates[1])
            t0 = time.perf_counter()
            mem_cache = DecodedCache("memory", SR)
            mem_cache.fill(manifest.df["path"], workers=args.workers)
            fill_s.append(time.perf_counter() - t0)
            rates, memory["memory"] = run_loader(cfg, manifest, mem_cache, args.workers, epochs=2)
            results["memory"].append(rates[1])
            print({k: [round(v, 1) for v in vs] for k, vs in results.items()}, flush=True)
        med = {k: statistics.median(v) for k, v in results.items()}
        out = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()}-core CPU dev machine, shared (other sessions' jobs "
                       f"may run beside it; load average at the end {os.getloadavg()})",
            "settings": {"clips": args.clips, "seconds": args.seconds, "file_rate": FILE_SR, "formats": "ogg+mp3",
                         "sample_rate": SR, "duration": DURATION, "batch": BATCH, "model": "nfaudio_small",
                         "workers": args.workers, "torch_threads": args.threads, "repeats": args.repeats},
            "clips_per_s": {k: {"median": round(v, 2), "runs": [round(x, 2) for x in results[k]]}
                            for k, v in med.items()},
            "ratio_to_model_only": {k: round(v / med["model_only"], 3) for k, v in med.items()},
            "memory_cache_fill_s": [round(x, 2) for x in fill_s],
            "worker_memory_at_epoch_end": memory,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
