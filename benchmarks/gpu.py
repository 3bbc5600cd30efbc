"""The CUDA paths in one command (issue 14 item 5): trainer, frontend, prediction and DDP on the GPU, and
eca_nfnet_l0 training throughput of the nfaudio trainer against a bare timm training loop on the same input.

What it runs, each part on its own (a failing part is recorded with its error and the others still run):

- ``trainer``: :func:`nfaudio.training.train_from_config` on synthetic folder-per-class clips (5 s at 32 kHz,
  decoded once into ``data.cache: memory``), eca_nfnet_l0 SED, AMP (fp16 autocast + GradScaler), AGC (on: the
  backbone is normalizer-free), EMA, ``model.channels_last``, ``device: cuda``. Throughput: the trainer's own
  ``clips_per_s`` of each epoch (the first includes decoding into the cache and cuDNN autotuning).
- ``step_loops``: the same clips as GPU-resident waveform batches (no DataLoader), trained ``--steps`` steps by
  (a) the nfaudio model with the trainer's step (autocast, GradScaler, AGC after unscaling, SGD, EMA update) and
  (b) a bare timm loop: ``timm.create_model("eca_nfnet_l0", in_chans=1)`` behind torchaudio's MelSpectrogram +
  AmplitudeToDB with the same STFT settings, BCE on the pooled logits, autocast + GradScaler, SGD, channels-last,
  no AGC, no EMA. Clips/s after ``--warmup`` steps, with ``torch.cuda.synchronize`` around the timed steps. The
  goal of the issue: the trainer within 10% of the bare loop.
- ``frontend``: :class:`nfaudio.frontend.LogMel` on the GPU against the CPU (max abs difference of the log-mel)
  and its windows/s on each.
- ``predict``: ``Predictor.from_checkpoint(best.pt, device="cuda")`` on a long recording against the CPU torch
  scores (max abs probability difference) and x real time.
- ``ddp``: ``torchrun --standalone --nproc_per_node <visible GPUs> -m nfaudio train`` (NCCL) on the same recipe;
  return code, wall time and the clips/s of ``history.csv`` (summed over ranks by the trainer).

On a machine without CUDA it says so and exits 0 without writing anything. It exits 1 when a part failed (the JSON
is written all the same). Writes ``benchmarks/results/gpu.json``.

``--device cpu`` is a smoke run of the same code on the CPU (AMP off by the trainer's own rule, gloo instead of
NCCL, 2 DDP processes): it checks the script, not the GPU, and its JSON says ``"smoke": true``. The tests run it
with timm's 0.2M-parameter ``test_nfnet`` (``--model test_nfnet``) so that a GPU session spends its minutes on
measuring, not on debugging.

Usage:
    python benchmarks/gpu.py [--clips 512] [--steps 60] [--batch-size 32] [--note "..."]
    python benchmarks/gpu.py --device cpu --model test_nfnet --clips 8 --out /tmp/gpu-smoke.json  # a smoke run

On the lent GPU machine (Python 3.12 with torch, timm, pandas, scikit-learn; no soundfile, librosa or soxr, and no
network), ``benchmarks/gpu_wheels.sh`` downloads here the wheels nfaudio needs there into ``.whl/``; the prepared
device command is in that script's header.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import machine
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 32000
SECONDS = 5.0
FRONTEND = dict(n_fft=2048, hop_length=512, n_mels=128, fmin=20.0, fmax=16000.0)


def make_clips(folder: Path, clips: int, classes: int) -> Path:
    """``clips`` 5 s wav files in ``classes`` folders: noise plus a class-specific tone."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(SR * SECONDS)) / SR
    for i in range(clips):
        path = folder / f"class{i % classes:02d}" / f"clip{i:04d}.wav"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        y = 0.05 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (500 + 400 * (i % classes)) * t)
        sf.write(path, y.astype(np.float32), SR)
    return folder


def recipe(root: Path, args: argparse.Namespace, epochs: int) -> dict:
    return {"data": {"kind": "folder", "root": str(root), "num_workers": args.workers, "cache": "memory"},
            "audio": {"sample_rate": SR, "duration": SECONDS},
            "frontend": FRONTEND,
            "model": {"name": args.model, "head": "sed", "channels_last": True},
            "optim": {"name": "sgd", "lr": 0.01},
            "train": {"epochs": epochs, "batch_size": args.batch_size, "amp": True, "ema": True,
                      "device": args.device, "progress": False, "seed": 0},
            "cv": {"n_folds": 5}}


def _amp(device: str) -> bool:
    """AMP where the trainer uses it: ``train.amp`` is honoured on CUDA only (nfaudio/training/trainer.py)."""
    return device == "cuda"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def part_trainer(root: Path, work: Path, args: argparse.Namespace) -> dict:
    from nfaudio.config import from_dict
    from nfaudio.training import train_from_config

    cfg = from_dict(recipe(root, args, args.epochs))
    shutil.rmtree(work / "trainer", ignore_errors=True)  # a fresh run (folds.csv of other clips would be refused)
    t0 = time.perf_counter()
    result = train_from_config(cfg, work / "trainer")
    return {"wall_s": round(time.perf_counter() - t0, 1), "epochs": args.epochs,
            "clips_per_s_per_epoch": [round(r["clips_per_s"], 1) for r in result.history],
            "train_loss_per_epoch": [round(r["train_loss"], 4) for r in result.history],
            "best_pt": str(work / "trainer" / "best.pt")}


def _device_batches(root: Path, batch_size: int, n_batches: int, device: str):
    import soundfile as sf
    import torch

    files = sorted(root.rglob("*.wav"))
    classes = sorted({f.parent.name for f in files})
    waves = torch.from_numpy(np.stack([sf.read(f, dtype="float32")[0] for f in files[:batch_size * n_batches]]))
    labels = torch.tensor([classes.index(f.parent.name) for f in files[:batch_size * n_batches]])
    target = torch.nn.functional.one_hot(labels, len(classes)).float()
    return waves.to(device).split(batch_size), target.to(device).split(batch_size), len(classes)


def _timed(step, batches, targets, warmup: int, steps: int, device: str) -> float:
    n = len(batches)
    for i in range(warmup):
        step(batches[i % n], targets[i % n])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % n], targets[i % n])
    _sync(device)
    return steps * batches[0].shape[0] / (time.perf_counter() - t0)


def _nfaudio_rate(root: Path, args: argparse.Namespace, batches, targets, n_classes: int) -> float:
    """Clips/s of the trainer's inner step (nfaudio/training/trainer.py) on GPU-resident batches."""
    import torch
    from timm.utils import ModelEmaV3

    from nfaudio.agc import AGC, agc_parameters
    from nfaudio.config import from_dict
    from nfaudio.training import ClipFrameLoss, build_model, build_optimizer

    cfg = from_dict(recipe(root, args, 1))
    amp = _amp(args.device)
    torch.manual_seed(0)
    model = build_model(cfg, n_classes).to(args.device).train()
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(args.device, enabled=amp)
    agc = AGC(agc_parameters(model), cfg.optim.agc_clip, cfg.optim.agc_eps)
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay)
    loss_fn = ClipFrameLoss(cfg.loss.name, cfg.loss.frame_weight)

    def step(wave, target):
        with torch.autocast(args.device, dtype=torch.float16, enabled=amp):
            out = model(wave)
        loss = loss_fn(out.clip, out.frame, target)
        scaler.scale(loss).backward()
        agc.clip_(scaler if amp else None, optimizer)  # unscales first, as in the trainer
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    return _timed(step, batches, targets, args.warmup, args.steps, args.device)


def _bare_rate(args: argparse.Namespace, batches, targets, n_classes: int) -> float:
    """Clips/s of a bare timm loop on the same batches (torchaudio log-mel, no AGC, no EMA)."""
    import timm
    import torch
    import torchaudio

    torch.manual_seed(0)
    amp = _amp(args.device)
    mel = torch.nn.Sequential(
        torchaudio.transforms.MelSpectrogram(SR, n_fft=FRONTEND["n_fft"], hop_length=FRONTEND["hop_length"],
                                             n_mels=FRONTEND["n_mels"], f_min=FRONTEND["fmin"],
                                             f_max=FRONTEND["fmax"]),
        torchaudio.transforms.AmplitudeToDB(top_db=80.0)).to(args.device)
    net = timm.create_model(args.model, pretrained=False, in_chans=1, num_classes=n_classes).to(args.device)
    net = net.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler(args.device, enabled=amp)
    bce = torch.nn.BCEWithLogitsLoss()

    def step(wave, target):
        with torch.no_grad():
            spec = mel(wave).unsqueeze(1).contiguous(memory_format=torch.channels_last)
        with torch.autocast(args.device, dtype=torch.float16, enabled=amp):
            loss = bce(net(spec).float(), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return _timed(step, batches, targets, args.warmup, args.steps, args.device)


def part_step_loops(root: Path, args: argparse.Namespace) -> dict:
    import torch

    batches, targets, n_classes = _device_batches(root, args.batch_size, max(1, args.clips // args.batch_size),
                                                  args.device)
    nfaudio_rate = _nfaudio_rate(root, args, batches, targets, n_classes)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    bare_rate = _bare_rate(args, batches, targets, n_classes)
    return {"nfaudio_step_clips_per_s": round(nfaudio_rate, 1), "bare_timm_clips_per_s": round(bare_rate, 1),
            "nfaudio_over_bare": round(nfaudio_rate / bare_rate, 3), "steps": args.steps, "warmup": args.warmup,
            "batch_size": args.batch_size,
            "amp": _amp(args.device),
            "nfaudio_step": "autocast fp16 + GradScaler, AGC (unscaled), SGD-Nesterov, EMA, channels-last, SED head",
            "bare_step": f"torchaudio log-mel (no grad) + timm {args.model} (in_chans=1), autocast fp16 + "
                         "GradScaler, SGD-Nesterov, channels-last, BCE on pooled logits"}


def part_frontend(args: argparse.Namespace) -> dict:
    import torch

    from nfaudio.frontend import LogMel

    dev = args.device
    fe = LogMel(sample_rate=SR, **FRONTEND).eval()
    wave = torch.randn(args.batch_size, int(SR * SECONDS), generator=torch.Generator().manual_seed(0)) * 0.1
    rates, outs = {}, {}
    with torch.no_grad():
        for name in dict.fromkeys(("cpu", dev)):
            f, x = fe.to(name), wave.to(name)
            outs[name] = f(x).cpu()  # the warm-up pass, also the output compared
            _sync(name)
            t0 = time.perf_counter()
            for _ in range(5):
                f(x)
            _sync(name)
            rates[f"{name}_windows_per_s"] = round(5 * len(x) / (time.perf_counter() - t0), 1)
    return {f"max_abs_diff_cpu_vs_{dev}": float((outs[dev] - outs["cpu"]).abs().max()), **rates}


def part_predict(best: Path, work: Path, minutes: float, device: str) -> dict:
    import soundfile as sf

    from nfaudio.predict import Predictor

    audio = work / "long.wav"
    want = int(minutes * 60 * SR)
    if not audio.exists() or sf.info(audio).frames != want:
        rng = np.random.default_rng(1)
        sf.write(audio, (0.05 * rng.standard_normal(want)).astype(np.float32), SR)
    out = {}
    frames = {}
    for dev in dict.fromkeys((device, "cpu")):
        p = Predictor.from_checkpoint(best, device=dev, num_workers=2, batch_size=64)
        t0 = time.perf_counter()
        frames[dev] = p.predict([audio])
        wall = time.perf_counter() - t0
        out[f"{dev}_xrt"] = round(minutes * 60 / wall, 1)
        out[f"{dev}_windows"] = len(frames[dev])
    out[f"max_abs_prob_diff_{device}_vs_cpu"] = float(
        np.abs(frames[device].to_numpy(dtype=np.float64) - frames["cpu"].to_numpy(dtype=np.float64)).max())
    out["minutes"] = minutes
    return out


def part_ddp(root: Path, work: Path, args: argparse.Namespace) -> dict:
    import torch
    import yaml

    n = torch.cuda.device_count() if args.device == "cuda" else 2
    shutil.rmtree(work / "ddp", ignore_errors=True)
    path = work / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe(root, args, 2)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "nfaudio",
           "-q", "train", "--recipe", str(path), "--out", str(work / "ddp")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # 2 processes on a small CPU
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    result = {"processes": n, "backend": "nccl" if args.device == "cuda" else "gloo", "rc": proc.returncode,
              "wall_s": round(time.perf_counter() - t0, 1), "command": " ".join(["torchrun", *cmd[3:]])}
    history = work / "ddp" / "history.csv"
    if proc.returncode == 0 and history.exists():
        import pandas as pd

        result["clips_per_s_per_epoch"] = [round(x, 1) for x in pd.read_csv(history)["clips_per_s"]]
    else:
        result["error"] = f"torchrun exited {proc.returncode}"
        lines = proc.stderr.strip().splitlines()
        result["stderr_errors"] = [line for line in lines if "error" in line.lower()][:8]  # the ranks' own
        result["stderr_tail"] = lines[-8:]
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=512)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the trainer")
    p.add_argument("--steps", type=int, default=60, help="timed steps of each step loop")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--predict-minutes", type=float, default=10.0)
    p.add_argument("--parts", default="trainer,step_loops,frontend,predict,ddp")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a smoke run of the same code (checks the script; measures nothing about a GPU)")
    p.add_argument("--model", default="eca_nfnet_l0", help="a timm model name (the bare loop builds it with timm)")
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-bench-gpu"))
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    args = p.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs CUDA: no CUDA device is visible here, nothing measured", file=sys.stderr)
        return 0
    sys.path.insert(0, str(ROOT))
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    root = make_clips(args.work / "clips", args.clips, args.classes)
    parts: dict[str, dict] = {}
    best = args.work / "trainer" / "best.pt"
    for name in args.parts.split(","):
        print(f"gpu benchmark: {name} ...", file=sys.stderr)
        try:
            if name == "trainer":
                parts[name] = part_trainer(root, args.work, args)
            elif name == "step_loops":
                parts[name] = part_step_loops(root, args)
            elif name == "frontend":
                parts[name] = part_frontend(args)
            elif name == "predict":
                parts[name] = (part_predict(best, args.work, args.predict_minutes, args.device) if best.exists()
                               else {"skipped": "no trainer checkpoint (run the trainer part first)"})
            elif name == "ddp":
                parts[name] = part_ddp(root, args.work, args)
            else:
                parts[name] = {"error": "unknown part"}
        except Exception as err:  # a benchmark records a broken path and goes on with the others
            parts[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        if args.device == "cuda":
            torch.cuda.empty_cache()
    trainer, loops = parts.get("trainer", {}), parts.get("step_loops", {})
    if trainer.get("clips_per_s_per_epoch") and loops.get("bare_timm_clips_per_s"):
        last = trainer["clips_per_s_per_epoch"][-1]
        trainer["last_epoch_over_bare"] = round(last / loops["bare_timm_clips_per_s"], 3)
    result = {"benchmark": f"CUDA paths and {args.model} training throughput vs a bare timm loop",
              "smoke": args.device != "cuda", "device": args.device, "model": args.model,
              "started_utc": started, "command": " ".join(["python", *sys.argv]), "note": args.note,
              "machine": {**machine.machine_info("torch", "timm"), "cuda": torch.version.cuda,
                          "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
              "data": {"clips": args.clips, "classes": args.classes, "seconds": SECONDS, "sample_rate": SR},
              "parts": parts}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(parts, indent=1)[:4000])
    print(f"wrote {args.out}")
    failed = [name for name, part in parts.items() if "error" in part]
    if failed:
        print(f"gpu benchmark: failed parts: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
