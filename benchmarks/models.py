"""Benchmark nfaudio models side by side: inference throughput, training step time with and without AGC, memory.

Each (model, phase) runs in its own subprocess so its peak memory is its own: on CPU the peak resident set
size (``resource.getrusage(...).ru_maxrss``; tracemalloc does not see torch's allocator), on CUDA
``torch.cuda.max_memory_allocated``. Models are one-channel, 5 s windows at 32 kHz, 128 mels, SED head.

AGC cost is reported two ways: the difference of the median step times with and without AGC (steps are
interleaved, so a load change on a shared machine hits both alike), and the median time of the
``adaptive_clip_grad_`` call itself relative to the plain step (the more stable number on a noisy CPU).

Usage:
    .venv/bin/python benchmarks/models.py                 # CPU, small repeat counts
    .venv/bin/python benchmarks/models.py --device cuda --steps 20 --infer-iters 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import machine

MODELS = ("eca_nfnet_l0", "dm_nfnet_f0", "resnet50", "efficientnet_b0")
SAMPLE_RATE = 32000
SECONDS = 5.0
NUM_CLASSES = 182  # BirdCLEF 2024


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mb()


def _agc_params(model):
    """nfaudio.agc's selection when the module exists; else every parameter outside the classifier modules."""
    try:
        from nfaudio.agc import adaptive_clip_grad_, agc_parameters

        return agc_parameters(model), adaptive_clip_grad_, "nfaudio.agc"
    except ImportError:
        from timm.utils.agc import adaptive_clip_grad

        skip = {id(p) for m in model.classifier_modules() for p in m.parameters()}
        return [p for p in model.parameters() if id(p) not in skip], adaptive_clip_grad, "timm.utils.agc"


def worker(args: argparse.Namespace) -> dict:
    """Run one phase ("infer" or "train") of one model and return its measurements."""
    import torch

    from nfaudio.models import create_model

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, NUM_CLASSES, head="sed", channels_last=args.channels_last).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    samples = int(SAMPLE_RATE * SECONDS)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    base_mb = _peak_mb(device)  # after import + build: the floor under both phases' peaks
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = dict(model=args.model, params_m=round(n_params / 1e6, 2), phase=args.phase,
               frame_seconds=model.frame_seconds)

    if args.phase == "infer":
        model.eval()
        wave = torch.randn(args.infer_batch, samples, device=device) * 0.1
        times = []
        with torch.no_grad(), amp:
            for i in range(args.warmup + args.infer_iters):
                _sync(device)
                t = time.perf_counter()
                result = model(wave)
                _sync(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
        t_batch = statistics.median(times)
        out.update(frames=result.frame.shape[1], infer_batch=args.infer_batch, infer_batch_s=t_batch,
                   infer_clips_per_s=args.infer_batch / t_batch, infer_peak_mb=_peak_mb(device), model_mb=base_mb)
        return out

    model.train()
    params, clip_fn, impl = _agc_params(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    wave = torch.randn(args.train_batch, samples, device=device) * 0.1
    target = (torch.rand(args.train_batch, NUM_CLASSES, device=device) < 0.02).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    plain, with_agc, clip_times = [], [], []

    def step(use_agc: bool) -> tuple[float, float]:
        _sync(device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = loss_fn(model(wave).clip.float(), target)
        loss.backward()
        t_clip = 0.0
        if use_agc:
            _sync(device)
            t0 = time.perf_counter()
            clip_fn(params, clip_factor=0.01, eps=1e-3)
            _sync(device)
            t_clip = time.perf_counter() - t0
        opt.step()
        _sync(device)
        return time.perf_counter() - t, t_clip

    for _ in range(args.warmup):
        step(False)
        step(True)
    for i in range(args.steps):
        for use_agc in ((False, True) if i % 2 == 0 else (True, False)):  # alternate the order
            dt, dt_clip = step(use_agc)
            if use_agc:
                with_agc.append(dt)
                clip_times.append(dt_clip)
            else:
                plain.append(dt)
    t_plain, t_agc, t_clip = (statistics.median(x) for x in (plain, with_agc, clip_times))
    out.update(train_batch=args.train_batch, train_step_s=t_plain, train_step_agc_s=t_agc,
               agc_overhead_pct=100 * (t_agc - t_plain) / t_plain, agc_clip_s=t_clip,
               agc_clip_pct=100 * t_clip / t_plain, agc_tensors=len(params), agc_impl=impl,
               train_peak_mb=_peak_mb(device), model_mb=base_mb)
    return out


def _machine(device: str) -> dict:
    import torch

    info = {**machine.machine_info("torch", "timm"), "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--infer-batch", type=int, default=16)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--infer-iters", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per mode (with / without AGC)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "models.json")
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=("infer", "train"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:  # subprocess worker
        print(json.dumps(worker(args)))
        return 0

    passthrough = [f"--device={args.device}", f"--infer-batch={args.infer_batch}",
                   f"--train-batch={args.train_batch}", f"--infer-iters={args.infer_iters}",
                   f"--steps={args.steps}", f"--warmup={args.warmup}"]
    passthrough += ["--amp"] * args.amp + ["--channels-last"] * args.channels_last
    results, t0 = [], time.time()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    for name in args.models:
        row: dict = {"model": name}
        for phase in ("infer", "train"):
            cmd = [sys.executable, __file__, f"--model={name}", f"--phase={phase}", *passthrough]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                row[f"{phase}_error"] = proc.stderr.strip().splitlines()[-1:] or ["failed"]
                print(f"{name} {phase}: FAILED {row[f'{phase}_error']}", file=sys.stderr)
                continue
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        row.pop("phase", None)
        results.append(row)
        print(json.dumps(row), flush=True)

    report = dict(machine=_machine(args.device),
                  settings=dict(sample_rate=SAMPLE_RATE, seconds=SECONDS, n_mels=128, head="sed",
                                num_classes=NUM_CLASSES, infer_batch=args.infer_batch,
                                train_batch=args.train_batch, infer_iters=args.infer_iters, steps=args.steps,
                                warmup=args.warmup, amp=args.amp, channels_last=args.channels_last,
                                optimizer="SGD momentum 0.9", agc=dict(clip_factor=0.01, eps=1e-3)),
                  results=results, wall_s=round(time.time() - t0, 1))
    report["machine"]["loadavg_start"] = load_start
    report["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'model':18s} {'params':>7s} {'infer clips/s':>13s} {'step s':>8s} {'step+AGC s':>10s} "
          f"{'AGC diff %':>10s} {'AGC call %':>10s} {'infer MB':>9s} {'train MB':>9s}")
    for r in results:
        if "train_step_s" not in r or "infer_clips_per_s" not in r:
            print(f"{r['model']:18s} failed")
            continue
        print(f"{r['model']:18s} {r['params_m']:6.1f}M {r['infer_clips_per_s']:13.2f} {r['train_step_s']:8.3f} "
              f"{r['train_step_agc_s']:10.3f} {r['agc_overhead_pct']:10.2f} {r['agc_clip_pct']:10.2f} "
              f"{r['infer_peak_mb']:9.0f} {r['train_peak_mb']:9.0f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
