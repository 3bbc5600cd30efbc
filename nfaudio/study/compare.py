"""``nfaudio study compare``: NFNet vs NF-ResNet vs BN ResNet vs EfficientNet on the recipe's data.

The practitioner's first question after Brock et al. 2021: on my audio, at my budget, which backbone? Every model
is trained through the same recipe and the same cross-validation folds (:func:`nfaudio.cv.run_cv`, one CV run
directory per model under ``OUT/cv/<model>``), with one budget: the recipe's epochs, the same ``epochs`` for every
model, or a wall-clock budget per fold (``budget_seconds``) turned into a step count from the model's measured
training-step time (calibrated once per model, kept in ``OUT/calibration.json`` so that a resumed study gives every
fold the same schedule); under a fixed budget the last epoch's model is scored, with no early stopping. A cell is
one (model, fold): its accuracy and macro ROC-AUC on the held-out fold (from the CV run's out-of-fold predictions,
exactly the numbers of that run's ``metrics.json``), its training time, the fold model's inference speed (clips/s
and x real time on the recipe's clip length, eval mode, no grad) and its parameter count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from nfaudio.config import Config
from nfaudio.study.framework import Study, markdown_table

__all__ = ["DEFAULT_BUDGET_SECONDS", "DEFAULT_MODELS", "FULL_MODELS", "budget_schedule", "measure_inference", "run"]

log = logging.getLogger(__name__)

# CPU-friendly: nfaudio's small NFNet, the smallest NF-ResNet in timm and its BatchNorm twin.
DEFAULT_MODELS = ("nfaudio_small", "nf_resnet26", "resnet26")
# GPU-sized: the paper's NFNets and the EfficientNet baseline (and the CPU set).
FULL_MODELS = ("nfaudio_small", "nf_resnet26", "resnet26", "eca_nfnet_l0", "dm_nfnet_f0", "efficientnet_b0")
_CALIBRATION = "calibration.json"
DEFAULT_BUDGET_SECONDS = 60.0  # the CLI's budget per fold unless --epochs or --full: minutes on a CPU


def _model_cfg(cfg: Config, model: str) -> Config:
    # A plain timm name keeps its own defaults for the variant-only keys; the recipe's pooling/dropout stay.
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=model, pretrained=cfg.model.pretrained))


def _step_seconds(cfg: Config, n_classes: int, steps: int = 3) -> float:
    """Median seconds of one training step (forward, backward, optimizer step) at the recipe's batch size on
    random waveforms of the recipe's clip length (data loading excluded)."""
    import torch

    from nfaudio.training.build import build_model

    model = build_model(cfg, n_classes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, n = cfg.train.batch_size, int(cfg.audio.sample_rate * cfg.audio.duration)
    gen = torch.Generator().manual_seed(0)
    wave = torch.randn(b, n, generator=gen) * 0.1
    target = torch.randint(0, n_classes, (b,), generator=gen)
    times = []
    for _ in range(steps + 1):  # the first is the warm-up
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(wave).clip, target).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def budget_schedule(step_seconds: float, budget_seconds: float, steps_per_epoch: int) -> tuple[int, int | None]:
    """``(epochs, max_steps_per_epoch)`` that fit ``budget_seconds`` of training steps: whole epochs when the
    budget holds at least two, else two epochs of as many steps as fit (at least one each)."""
    total = int(budget_seconds / step_seconds)
    if total >= 2 * steps_per_epoch:
        return total // steps_per_epoch, None
    return 2, max(1, total // 2)


def measure_inference(model: Any, samples: int, batch_size: int, repeats: int = 3) -> float:
    """Clips per second of ``model`` in eval mode (no grad) on batches of random waveforms (median of
    ``repeats`` after one warm-up)."""
    import torch

    model.eval()
    wave = torch.randn(batch_size, samples, generator=torch.Generator().manual_seed(0)) * 0.1
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            model(wave)
            times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times[1:])


def _calibrate(study: Study, cfg: Config, model: str, n_classes: int, n_train: int,
               budget_seconds: float | None, epochs: int | None = None) -> dict[str, Any]:
    path = study.out / _CALIBRATION
    known = json.loads(path.read_text()) if path.exists() else {}
    key = f"{model}@{budget_seconds}" if epochs is None else f"{model}@{epochs}epochs"
    if key not in known:
        if epochs is not None:
            known[key] = {"epochs": int(epochs), "max_steps": None}
        elif budget_seconds is None:
            known[key] = {"epochs": cfg.train.epochs, "max_steps": cfg.train.max_steps_per_epoch}
        else:
            step = _step_seconds(cfg, n_classes)
            epochs, max_steps = budget_schedule(step, budget_seconds, math.ceil(n_train / cfg.train.batch_size))
            known[key] = {"epochs": epochs, "max_steps": max_steps, "step_seconds": step}
        from nfaudio.fileio import write_json

        write_json(path, known, indent=1)
    return known[key]


def run(cfg: Config, out: str | os.PathLike, models: list[str] | None = None, folds: list[int] | None = None,
        budget_seconds: float | None = None, seed: int | None = None, epochs: int | None = None) -> Path:
    """Cross-validate every model on the same folds under the same budget; results, scatter plot, ``report.md``.

    Args:
        cfg: the recipe (its data, folds, augmentation, optimizer; ``model.name`` is replaced per model).
        out: the study directory (re-run to resume: finished (model, fold) cells are skipped).
        models: model names (registry or timm; default :data:`DEFAULT_MODELS`).
        folds: fold indices (default ``cfg.cv.folds`` or every fold).
        budget_seconds: wall-clock training budget per fold (None: the recipe's epochs).
        epochs: the same number of epochs for every model instead. With either budget early stopping is off and
            the last epoch's model is scored (no checkpoint chosen on the held-out fold).

    Returns:
        The report's path.

    Raises:
        ValueError: both ``budget_seconds`` and ``epochs``, or a fold that does not exist.
    """
    if budget_seconds is not None and epochs is not None:
        raise ValueError("give a wall-clock budget or an epoch budget, not both")
    import numpy as np

    from nfaudio.cv import cv_metrics, run_cv
    from nfaudio.data import load_data
    from nfaudio.folds import assign_folds
    from nfaudio.rundir import RunDir
    from nfaudio.runtime import intra_op_threads, torch_threads

    seed = cfg.train.seed if seed is None else seed
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed, progress=False))
    models = list(models or DEFAULT_MODELS)
    study = Study("compare", out, seed=seed)
    manifest = load_data(cfg)
    c = cfg.cv  # the assignment run_cv makes in each model's run directory (nfaudio.folds.run_folds)
    fold_of_row = np.asarray(assign_folds(manifest, c.n_folds, c.strategy, c.group_column, cfg.train.seed))
    available = sorted(int(k) for k in np.unique(fold_of_row))
    folds = list(folds if folds is not None else (cfg.cv.folds if cfg.cv.folds is not None else available))
    unknown = sorted(set(folds) - set(available))
    if unknown:
        raise ValueError(f"folds {unknown} do not exist; the recipe's folds are {available}")
    n_classes = len(manifest.classes)
    cells = [{"model": m, "fold": k, "budget_seconds": budget_seconds} for m in models for k in folds]
    if epochs is not None:  # a key of its own, so that a study run with another budget is never mistaken for it
        cells = [{**c, "budget_epochs": int(epochs)} for c in cells]

    def measure(cell: dict[str, Any]) -> dict[str, Any]:
        mcfg = _model_cfg(cfg, cell["model"])
        n_train = int((fold_of_row != cell["fold"]).sum())
        with torch_threads(intra_op_threads(cfg.train.threads, workers=cfg.data.num_workers)):
            cal = _calibrate(study, mcfg, cell["model"], n_classes, n_train, budget_seconds, epochs)
        fixed = budget_seconds is not None or epochs is not None
        mcfg = dataclasses.replace(mcfg, train=dataclasses.replace(
            mcfg.train, epochs=cal["epochs"], max_steps_per_epoch=cal["max_steps"],
            early_stop_patience=None if fixed else mcfg.train.early_stop_patience,
            select="last" if fixed else mcfg.train.select))  # a fixed budget: no choice on the held-out fold
        run_dir = study.out / "cv" / cell["model"]
        t0 = time.perf_counter()
        try:
            metrics = run_cv(mcfg, run_dir, folds=[cell["fold"]])
        except (RuntimeError, ValueError) as err:
            log.warning("cell %s failed: %s", cell, err)
            return {"status": "failed", "error": str(err)}
        train_s = time.perf_counter() - t0
        fold = RunDir(run_dir).fold(cell["fold"])
        import pandas as pd

        oof = pd.read_csv(fold.file(RunDir.OOF), dtype={"row_id": str})
        auc_cfg = dataclasses.replace(mcfg, train=dataclasses.replace(mcfg.train, metric="macro_auc"))
        auc = cv_metrics(auc_cfg, manifest, oof)["per_fold"][str(cell["fold"])]["macro_auc"]
        model, _ = fold.load_model()
        samples = int(cfg.audio.sample_rate * cfg.audio.duration)
        with torch_threads(intra_op_threads(cfg.train.threads)):
            clips_s = measure_inference(model, samples, cfg.train.eval_batch_size or cfg.train.batch_size)
        per_fold = metrics["per_fold"][str(cell["fold"])]
        return {"status": "ok", "metric": mcfg.train.metric, "score": per_fold[mcfg.train.metric],
                "accuracy": per_fold.get("accuracy"), "macro_auc": auc, "train_seconds": train_s,
                "epochs": cal["epochs"], "max_steps": cal["max_steps"], "step_seconds": cal.get("step_seconds"),
                "infer_clips_per_s": clips_s, "x_real_time": clips_s * cfg.audio.duration,
                "params": sum(p.numel() for p in model.parameters())}

    rows = study.run(cells, measure)
    return _report(study, rows, cfg, budget_seconds, epochs)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model: mean and std of the fold scores, mean training time, inference speed, parameters."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == model and r.get("status") == "ok"]
        if not ok:
            continue
        s = {"model": model, "folds": len(ok), "params": ok[0]["params"], "epochs": ok[0]["epochs"],
             "max_steps": ok[0]["max_steps"]}
        for key in ("score", "accuracy", "macro_auc"):
            vals = [r[key] for r in ok if r.get(key) is not None]
            s[f"{key}_mean"] = statistics.fmean(vals) if vals else None
            s[f"{key}_std"] = statistics.pstdev(vals) if vals else None
        s["train_seconds"] = statistics.fmean(r["train_seconds"] for r in ok)
        s["infer_clips_per_s"] = statistics.median(r["infer_clips_per_s"] for r in ok)
        s["x_real_time"] = statistics.median(r["x_real_time"] for r in ok)
        out.append(s)
    return out


def _report(study: Study, rows: list[dict[str, Any]], cfg: Config, budget_seconds: float | None,
            epochs: int | None = None) -> Path:
    from nfaudio.study.plots import scatter_plot

    summary = summarise(rows)
    scatter_plot(summary, "infer_clips_per_s", "score_mean", "model", study.out / "accuracy_vs_speed.png",
                 title=f"{cfg.train.metric} (mean over folds) vs inference speed")
    budget = (f"{budget_seconds:g} s of training steps per fold (epochs and steps per epoch from each model's "
              "measured step time; data loading and per-epoch validation come on top)" if budget_seconds
              else f"{epochs} epochs for every model, no early stopping" if epochs is not None
              else f"the recipe's {cfg.train.epochs} epochs")
    ok = [r for r in rows if r.get("status") == "ok"]
    sections = [
        ("Set-up", f"Every model through the same recipe ({cfg.model.head} head, {cfg.optim.name} lr "
                   f"{cfg.optim.lr:g}, AGC {cfg.optim.agc}, model.pretrained {cfg.model.pretrained}) and the same "
                   f"folds ({cfg.cv.strategy}); budget: {budget}. Score: {cfg.train.metric} and macro ROC-AUC on "
                   "each held-out fold (out-of-fold predictions of the fold's "
                   f"{'last epoch' if budget_seconds or epochs is not None else 'selected checkpoint'}). Inference: "
                   f"eval-mode clips/s on {cfg.audio.duration:g} s clips, batch "
                   f"{cfg.train.eval_batch_size or cfg.train.batch_size}; x real time = clips/s x clip length."),
        ("Per model", markdown_table(summary, ["model", "params", "folds", "epochs", "max_steps", "score_mean",
                                               "score_std", "macro_auc_mean", "train_seconds",
                                               "infer_clips_per_s", "x_real_time"])),
        ("Per fold", markdown_table(ok, ["model", "fold", "score", "accuracy", "macro_auc", "train_seconds",
                                         "epochs", "infer_clips_per_s"])),
        ("Accuracy vs speed", "![accuracy vs speed](accuracy_vs_speed.png)"),
    ]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        sections.append(("Failed cells", markdown_table(failed, ["model", "fold", "error"])))
    return study.write_report("compare: backbones through one recipe and one set of folds", sections)
