"""``nfaudio study bn-cost``: what BatchNorm costs (Brock et al. 2021, section 1: BN is expensive, behaves
differently in training and at inference, and couples a clip's output to its batch-mates).

Matched pairs that differ only in normalisation, on the recipe's input (waveform of ``audio.duration`` at
``audio.sample_rate`` -> the recipe's log-mel frontend -> backbone -> pooled head: the full model is timed,
frontend included). Each (model, batch size, channels-last) case runs in a fresh subprocess
(:mod:`nfaudio.study.probe`) so its peak RSS is its own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from nfaudio.config import Config
from nfaudio.study.framework import Study, markdown_table

__all__ = ["DEFAULT_MODELS", "FULL_MODELS", "PAIRS", "run", "run_case"]

log = logging.getLogger(__name__)

# (BN net, NF net): the same architecture with and without BatchNorm.
PAIRS = {"smallcnn_bn": "smallcnn_nf", "resnet26": "nf_resnet26", "resnet50": "nf_resnet50",
         "regnety_008": "nf_regnet_b0"}
DEFAULT_MODELS = ("smallcnn_bn", "smallcnn_nf", "resnet26", "nf_resnet26")
FULL_MODELS = tuple(m for pair in PAIRS.items() for m in pair)
DEFAULT_BATCHES = (8, 16, 32)


def run_case(spec: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """Measure one case in a fresh ``python -m nfaudio.study.probe`` process.

    Raises:
        RuntimeError: the subprocess failed (its stderr's last line in the message).
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # this checkout's nfaudio, whatever is installed
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "nfaudio.study.probe", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"probe of {spec['model']} (batch {spec['batch_size']}) failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(cfg: Config, out: str | os.PathLike, models: list[str] | None = None, batch_sizes: list[int] | None = None,
        repeats: int = 5, channels_last: tuple[bool, ...] = (False, True), device: str = "cpu",
        threads: int | None = None, seed: int = 0) -> Path:
    """Run the grid (models x batch sizes x channels-last), write the results, plots and ``report.md``.

    Returns:
        The report's path.
    """
    from nfaudio.training.build import frontend_kwargs

    models = list(models or DEFAULT_MODELS)
    batch_sizes = list(batch_sizes or DEFAULT_BATCHES)
    samples = int(round(cfg.audio.duration * cfg.audio.sample_rate))
    base = {"samples": samples, "num_classes": 10, "frontend": frontend_kwargs(cfg), "repeats": repeats,
            "device": device, "seed": seed, "threads": threads}
    study = Study("bn-cost", out, seed=seed)
    cells = [{"model": m, "batch_size": b, "channels_last": cl, "device": device, "repeats": repeats}
             for m in models for b in batch_sizes for cl in channels_last]

    def measure(cell: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"status": "ok", **run_case({**base, **cell})}
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            log.warning("%s", err)
            return {"status": "failed", "error": str(err)}

    rows = study.run(cells, measure)
    return _report(study, rows, samples, cfg)


def _report(study: Study, rows: list[dict[str, Any]], samples: int, cfg: Config) -> Path:
    from nfaudio.study.plots import line_plot

    ok = [r for r in rows if r.get("status") == "ok"]
    mem = "peak_cuda_mb" if any("peak_cuda_mb" in r for r in ok) else "peak_rss_mb"
    for r in ok:
        r["layout"] = "channels_last" if r["channels_last"] else "contiguous"
    pairs = []
    for bn, nf in PAIRS.items():
        for r in ok:
            if r["model"] != bn:
                continue
            match = [q for q in ok if q["model"] == nf and q["batch_size"] == r["batch_size"]
                     and q["channels_last"] == r["channels_last"]]
            if match:
                q = match[0]
                pairs.append({"pair": f"{bn} / {nf}", "batch_size": r["batch_size"], "layout": r["layout"],
                              "train_ms_bn": r["train_step_ms"], "train_ms_nf": q["train_step_ms"],
                              "train_nf/bn": q["train_step_ms"] / r["train_step_ms"],
                              "infer_ms_bn": r["infer_ms"], "infer_ms_nf": q["infer_ms"],
                              "infer_nf/bn": q["infer_ms"] / r["infer_ms"],
                              "mem_mb_bn": r[mem], "mem_mb_nf": q[mem]})
    cols = ["model", "params", "batch_size", "layout", "train_step_ms", "infer_ms", "train_clips_per_s",
            "infer_clips_per_s", "base_rss_mb", mem]
    disc = ["model", "batch_size", "layout", "train_eval_diff", "batch_dependence", "output_scale"]
    for y, name in (("train_step_ms", "train_time.png"), ("infer_ms", "infer_time.png"), (mem, "memory.png")):
        line_plot(ok, "batch_size", y, ["model", "layout"], study.out / name, title=f"bn-cost: {y}")
    failed = [r for r in rows if r.get("status") != "ok"]
    sections = [
        ("Set-up", f"Input: {samples} samples ({cfg.audio.duration:g} s at {cfg.audio.sample_rate} Hz) -> the "
                   f"recipe's log-mel frontend ({cfg.frontend.n_mels} mels) -> backbone -> pooled head, 10 classes; "
                   "the full model is timed (frontend included), fp32, SGD training step, eval-mode inference "
                   "without gradients; median of the repeats after one warm-up; each case in a fresh process. "
                   f"Memory: {mem} (peak RSS of the case's process; base_rss_mb: after building the model)."),
        ("BN vs NF side by side", markdown_table(pairs, list(pairs[0]) if pairs else ["pair"])),
        ("All cases", markdown_table(ok, cols)),
        ("Train/eval discrepancy and batch dependence",
         "train_eval_diff: mean |logit(train mode) - logit(eval mode)| on the same batch; batch_dependence: mean "
         "|logit of clip 0 in its batch - logit of clip 0 in a batch of 2|, both train mode (an NF net: 0).\n\n"
         + markdown_table(ok, disc)),
        ("Plots", "![train](train_time.png) ![infer](infer_time.png) ![memory](memory.png)"),
    ]
    if failed:
        sections.append(("Failed cases", markdown_table(failed, ["model", "batch_size", "channels_last", "error"])))
    return study.write_report("bn-cost: what BatchNorm costs", sections)
