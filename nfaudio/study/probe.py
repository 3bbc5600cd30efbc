"""One ``bn-cost`` case in its own process: ``python -m nfaudio.study.probe '<json spec>'`` prints a JSON line.

The process builds one model (log-mel frontend included: waveform in, logits out), times training steps
(forward, backward, SGD step) and inference (eval mode, no grad) over ``repeats`` runs after one warm-up, and
reports medians and the peak memory: on CPU the process's peak RSS (``VmHWM`` of ``/proc/self/status``, reset
by ``execve``; ``ru_maxrss`` elsewhere, which Linux carries over from the parent across fork and exec; a fresh
process per case, so one case's peak never hides another's), on CUDA ``torch.cuda.max_memory_allocated``.
It also scores one batch in train and in eval mode (the train/eval discrepancy of BatchNorm) and one fixed
clip in train mode inside batches of 2 and of ``batch_size`` (a BN net's output depends on its batch-mates).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["build_case_model", "main", "measure_case"]



def _peak_rss_mb() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` (Linux; the high-water mark of this program's own memory), else
    ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024

def build_case_model(name: str, num_classes: int, frontend: dict[str, Any]):
    """``smallcnn_bn`` / ``smallcnn_nf``: the study's plain CNN with or without BatchNorm; any other name goes
    through :func:`nfaudio.models.create_model` (timm backbones adapted to one input channel), pooled head."""
    import torch
    from torch import nn

    from nfaudio.frontend import LogMel
    from nfaudio.models import create_model

    if name in ("smallcnn_bn", "smallcnn_nf"):
        bn = name.endswith("_bn")
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in (32, 64, 128, 256):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=not bn)]
            layers += [nn.BatchNorm2d(c_out)] if bn else []
            layers += [nn.ReLU()]
            c_in = c_out

        class SmallCNN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.frontend = LogMel(**frontend)
                self.features = nn.Sequential(*layers)
                self.fc = nn.Linear(c_in, num_classes)

            def forward(self, wave: torch.Tensor) -> torch.Tensor:
                x = self.frontend(wave)  # (B, 1, mels, frames)
                return self.fc(self.features(x).mean(dim=(2, 3)))

        return SmallCNN()
    return create_model(name, num_classes=num_classes, pretrained=False, head="pooled", frontend=frontend,
                        spec_augment=None, drop_rate=0.0, drop_path_rate=0.0)


def _logits(out: Any):
    import torch

    return out if isinstance(out, torch.Tensor) else out.clip  # an AudioClassifier returns (clip, frame)


def measure_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one case (see the module docstring); ``spec`` holds model, batch_size, channels_last, samples,
    num_classes, frontend, repeats, device, seed."""
    import torch

    torch.manual_seed(spec["seed"])
    device = torch.device(spec.get("device", "cpu"))
    cuda = device.type == "cuda"
    b, n = spec["batch_size"], spec["samples"]
    model = build_case_model(spec["model"], spec["num_classes"], spec["frontend"]).to(device)
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    wave = torch.randn(b, n, device=device) * 0.1
    target = torch.randint(0, spec["num_classes"], (b,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    base_rss = _peak_rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device) / 2**20

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(_logits(model(wave)), target).backward()
        opt.step()

    @torch.no_grad()
    def infer() -> None:
        model(wave)

    model.train()
    train_times = [timed(train_step) for _ in range(spec["repeats"] + 1)][1:]  # the first is the warm-up
    model.eval()
    infer_times = [timed(infer) for _ in range(spec["repeats"] + 1)][1:]
    result = {"params": params, "train_step_ms": 1000 * statistics.median(train_times),
              "infer_ms": 1000 * statistics.median(infer_times),
              "train_clips_per_s": b / statistics.median(train_times),
              "infer_clips_per_s": b / statistics.median(infer_times),
              "base_rss_mb": base_rss,
              "peak_rss_mb": _peak_rss_mb()}
    if cuda:
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["base_cuda_mb"] = base_cuda
    with torch.no_grad():  # train/eval discrepancy and batch dependence (running stats as the steps left them)
        model.eval()
        eval_out = _logits(model(wave))
        model.train()
        train_out = _logits(model(wave))
        result["train_eval_diff"] = float((train_out - eval_out).abs().mean())
        pair = _logits(model(wave[:2]))[0]
        result["batch_dependence"] = float((train_out[0] - pair).abs().mean())
        result["output_scale"] = float(eval_out.abs().mean())
    return result


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    import torch

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    print(json.dumps(measure_case(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
