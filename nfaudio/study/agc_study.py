"""``nfaudio study agc``: the central ablation of Brock et al. 2021 (Figure 2) on audio.

An NF net trained through nfaudio's own trainer (:func:`nfaudio.training.trainer.fit`) on the recipe's data
over a grid of batch sizes, the learning rate scaled linearly with the batch (``lr * batch / recipe batch``),
in three arms: AGC at each clipping threshold, plain global gradient-norm clipping (``optim.clip_grad_norm``)
and no clipping. Each cell records its final and best validation score and whether it diverged: a NaN or
infinite loss, or a final validation loss above the untrained model's (the same seed's initial weights). A
divergence is a result, never a crash.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from nfaudio.config import Config
from nfaudio.study.framework import Study, markdown_table

__all__ = ["DEFAULT_BATCHES", "DEFAULT_CLIPS", "cell_config", "run"]

log = logging.getLogger(__name__)

DEFAULT_BATCHES = (16, 64)
DEFAULT_CLIPS = (0.01, 0.04, 0.16)
FULL_BATCHES = (16, 32, 64, 128, 256, 512)
FULL_CLIPS = (0.01, 0.02, 0.04, 0.08, 0.16)


def cell_config(cfg: Config, cell: dict[str, Any], base_batch: int, epochs: int, max_steps: int | None) -> Config:
    """The recipe of one cell: batch size, linearly scaled LR, the arm's clipping, a short budget."""
    arm = cell["arm"]
    optim = dataclasses.replace(cfg.optim, lr=cfg.optim.lr * cell["batch_size"] / base_batch, agc=arm == "agc",
                                agc_clip=cell["clip"] if arm == "agc" else cfg.optim.agc_clip,
                                clip_grad_norm=cell["clip"] if arm == "clip_norm" else None)
    train = dataclasses.replace(cfg.train, batch_size=cell["batch_size"], epochs=epochs, max_steps_per_epoch=max_steps,
                                early_stop_patience=None, progress=False, select="last")
    return dataclasses.replace(cfg, optim=optim, train=train)


def _initial_val_loss(cfg: Config, val_set, n_classes: int, seed: int) -> float:
    """The validation loss of the untrained model (built as :func:`fit` builds it: same seed)."""
    import torch
    from torch.utils.data import DataLoader

    from nfaudio.data import AudioDataset
    from nfaudio.training.build import build_model
    from nfaudio.training.losses import ClipFrameLoss
    from nfaudio.training.state import seed_everything
    from nfaudio.training.trainer import evaluate

    seed_everything(seed)
    model = build_model(cfg, n_classes)
    a = cfg.audio
    ds = AudioDataset(val_set, sample_rate=a.sample_rate, duration=a.duration, train=False, secondary_weight=1.0,
                      crop=a.eval_crop)
    loader = DataLoader(ds, batch_size=cfg.train.eval_batch_size or cfg.train.batch_size, shuffle=False)
    loss_fn = ClipFrameLoss(cfg.loss.name, cfg.loss.frame_weight, cfg.loss.focal_gamma, cfg.loss.focal_alpha)
    loss, _, _ = evaluate(model, loader, loss_fn, torch.device("cpu"), cfg.activation)
    return loss


def run(cfg: Config, out: str | os.PathLike, batch_sizes: list[int] | None = None,
        clips: list[float] | None = None, grad_norms: list[float] | None = None, epochs: int = 2,
        max_steps: int | None = 10, arms: tuple[str, ...] = ("agc", "clip_norm", "none"), seed: int | None = None
        ) -> Path:
    """Train every cell (arm x threshold x batch size), write the results, a heatmap and ``report.md``.

    Returns:
        The report's path.
    """
    from nfaudio.data import load_data, split_train_val
    from nfaudio.folds import run_folds
    from nfaudio.rundir import RunDir
    from nfaudio.training.trainer import fit

    seed = cfg.train.seed if seed is None else seed
    batch_sizes = list(batch_sizes or DEFAULT_BATCHES)
    clips, grad_norms = list(clips or DEFAULT_CLIPS), list(grad_norms or [1.0])
    base_batch = cfg.train.batch_size
    study = Study("agc", out, seed=seed)
    manifest = load_data(cfg)
    folds = None if cfg.data.split_column else run_folds(cfg, manifest, RunDir(study.out).create())
    train_set, val_set = split_train_val(cfg, manifest, folds)
    start_loss = _initial_val_loss(cfg, val_set, len(train_set.classes), seed)
    thresholds = {"agc": clips, "clip_norm": grad_norms, "none": [None]}
    cells = [{"arm": arm, "clip": c, "batch_size": b, "epochs": epochs, "max_steps": max_steps}
             for arm in arms for c in thresholds[arm] for b in batch_sizes]

    def measure(cell: dict[str, Any]) -> dict[str, Any]:
        cell_cfg = cell_config(cfg, cell, base_batch, epochs, max_steps)
        run_dir = study.out / "cells" / f"{cell['arm']}_{cell['clip']}_b{cell['batch_size']}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a cell killed half-way starts again
        row: dict[str, Any] = {"lr": cell_cfg.optim.lr, "start_val_loss": start_loss}
        try:
            result = fit(cell_cfg, train_set, val_set, run_dir, seed=seed)
        except (ValueError, RuntimeError, FloatingPointError) as err:  # e.g. a metric refusing NaN scores
            if "nan" not in str(err).lower() and "inf" not in str(err).lower():
                log.warning("cell %s failed: %s", cell, err)
                return {**row, "status": "failed", "error": str(err)}
            return {**row, "status": "ok", "diverged": True, "error": str(err)}
        finally:
            for ckpt in run_dir.glob("*.pt"):  # keep history.csv, drop the weights
                ckpt.unlink()
        losses = [h[k] for h in result.history for k in ("train_loss", "val_loss")]
        last = result.history[-1]
        diverged = any(not math.isfinite(v) for v in losses) or last["val_loss"] > start_loss
        return {**row, "status": "ok", "diverged": bool(diverged), "final_score": last["val_score"],
                "best_score": max(h["val_score"] for h in result.history), "final_train_loss": last["train_loss"],
                "final_val_loss": last["val_loss"]}

    rows = study.run(cells, measure)
    return _report(study, rows, cfg, base_batch)


def _label(row: dict[str, Any]) -> str:
    return row["arm"] if row["clip"] is None else f"{row['arm']} {row['clip']:g}"


def _report(study: Study, rows: list[dict[str, Any]], cfg: Config, base_batch: int) -> Path:
    from nfaudio.study.plots import heatmap

    ok = [r for r in rows if r.get("status") == "ok"]
    labels = list(dict.fromkeys(_label(r) for r in rows))
    batches = sorted({r["batch_size"] for r in rows})
    grid = {(_label(r), r["batch_size"]): r for r in ok}
    values, marks = [], []
    for lab in labels:
        vrow, mrow = [], []
        for b in batches:
            r = grid.get((lab, b))
            score = r.get("final_score") if r else None
            vrow.append(math.nan if r is None or r["diverged"] or score is None else score)
            mrow.append("" if r is None else ("div" if r["diverged"] else f"{score:.2f}"))
        values.append(vrow)
        marks.append(mrow)
    heatmap(values, labels, [str(b) for b in batches], study.out / "agc_heatmap.png",
            title=f"final {cfg.train.metric} (div: diverged)", marks=marks)
    for r in ok:
        r["cell_label"] = _label(r)
    cols = ["cell_label", "batch_size", "lr", "diverged", "final_score", "best_score", "final_train_loss",
            "final_val_loss", "start_val_loss", "cell_seconds"]
    t = ok[0] if ok else {"epochs": "?", "max_steps": "?"}
    steps = "every batch" if t["max_steps"] is None else f"at most {t['max_steps']} steps"
    sections = [
        ("Set-up", f"Model {cfg.model.name} trained by nfaudio's trainer on the recipe's data; {t['epochs']} "
                   f"epoch(s) of {steps}; lr = {cfg.optim.lr:g} x batch / {base_batch} "
                   f"({cfg.optim.name}); metric {cfg.train.metric} on the validation split after the last epoch. "
                   "Diverged: a NaN/inf loss, or a final validation loss above the untrained model's."),
        (f"Final {cfg.train.metric} (rows: arm and threshold; columns: batch size)",
         markdown_table([{"arm": lab, **{str(b): m for b, m in zip(batches, mrow)}}
                         for lab, mrow in zip(labels, marks)], ["arm"] + [str(b) for b in batches])),
        ("All cells", markdown_table(ok, cols)),
        ("Heatmap", "![AGC heatmap](agc_heatmap.png)"),
    ]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        sections.append(("Failed cells", markdown_table(failed, ["arm", "clip", "batch_size", "error"])))
    return study.write_report("agc: adaptive gradient clipping vs batch size", sections)
