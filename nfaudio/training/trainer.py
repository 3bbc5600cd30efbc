"""Fit one train/validation split: the nfaudio trainer.

NFNets (Brock et al. 2021) are trained with SGD-Nesterov and Adaptive Gradient Clipping; AGC is on by
default whenever the backbone holds no BatchNorm layer (derived from the modules, not the name).
The last checkpoint holds everything needed to resume exactly: model, optimizer, scheduler, scaler,
EMA, epoch, history and RNG states. Data order and crops are seeded by ``(seed, epoch)``, so a run
resumed after epoch ``k`` ends with the same weights as an uninterrupted one (on CPU).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from nfaudio.agc import AGC, agc_parameters
from nfaudio.augment import Mixup
from nfaudio.backends import activate
from nfaudio.config import Config
from nfaudio.data import AudioDataset, Manifest, class_balanced_weights, encode_targets, load_data, split_train_val
from nfaudio.folds import run_folds
from nfaudio.metrics import get_metric
from nfaudio.models import save_model
from nfaudio.rundir import RunDir
from nfaudio.runtime import intra_op_threads, resolve_device, torch_threads
from nfaudio.selftrain.data import pseudo_training_set
from nfaudio.training.build import (
    build_augment,
    build_model,
    build_optimizer,
    check_model,
    cosine_lambda,
    is_normalizer_free,
)
from nfaudio.training.distill import Distiller, load_teacher
from nfaudio.training.distributed import (
    World,
    barrier,
    device_for,
    distributed,
    gather,
    reduce_sum,
    world,
    wrap,
)
from nfaudio.training.loader import build_cache, train_loader
from nfaudio.training.loggers import HistoryLogger, plot_curves
from nfaudio.training.losses import ClipFrameLoss
from nfaudio.training.state import get_rng_state, seed_everything, set_rng_state, worker_init

__all__ = ["FitResult", "epochs_for", "evaluate", "evaluate_rows", "fit", "loader_steps", "shared_folds",
           "train_from_config"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit` returns: the best validation score and the epoch it was reached, and the per-epoch
    history. Without validation (``val_set=None``) ``best_score`` is None and ``best_epoch`` the last epoch."""

    best_score: float | None
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    out_dir: Path | None = None


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, loss_fn: ClipFrameLoss, device: torch.device,
             activation: str) -> tuple[float, np.ndarray, list[str]]:
    """Validation loss, class probabilities ``(N, C)`` (``activation`` of the clip logits) and row ids, in loader
    order. Leaves the model in eval mode (the training loop switches it back)."""
    model.eval()
    total, count, probs, ids = 0.0, 0, [], []
    for wave, target, _weight, row_id in loader:
        wave, target = wave.to(device), target.to(device)
        out = model(wave)
        total += float(loss_fn(out.clip, out.frame, target)) * len(wave)
        count += len(wave)
        probs.append(activate(out.clip, activation).cpu().numpy())
        ids.extend(row_id)
    return total / max(count, 1), np.concatenate(probs), ids


def evaluate_rows(model: nn.Module, dataset: AudioDataset, loss_fn: ClipFrameLoss, device: torch.device,
                  activation: str, batch_size: int, loader_kw: dict[str, Any], w: World | None = None
                  ) -> tuple[float, np.ndarray, list[str]]:
    """:func:`evaluate` over a whole dataset in its row order; under torchrun each rank scores rows
    ``rank::size`` and the predictions are gathered, so every rank returns the same loss, probabilities and ids."""
    w = w or world()
    rows = range(w.rank, len(dataset), w.size) if w.enabled else None
    loader = DataLoader(dataset if rows is None else Subset(dataset, rows), batch_size=batch_size, shuffle=False,
                        **loader_kw)
    loss, probs, ids = evaluate(model, loader, loss_fn, device, activation)
    if not w.enabled:
        return loss, probs, ids
    total, count = reduce_sum([loss * len(ids), len(ids)], w)
    probs, ids = gather(probs, ids, w)
    return total / max(count, 1), probs, ids


def fit(cfg: Config, train_set: Manifest, val_set: Manifest | None, out_dir: str | Path,
        resume: bool = False, seed: int | None = None) -> FitResult:
    """Train on ``train_set``, validate on ``val_set`` every epoch, checkpoint into ``out_dir``.

    Args:
        cfg: the resolved recipe.
        train_set, val_set: manifests sharing one class list. ``val_set=None`` trains on everything
            without validation (the CV ``--full`` model): ``best.pt`` is then the last epoch's model.
        out_dir: run directory (``best.pt``, ``last.pt``, ``history.csv``, ``curves.png``).
        resume: continue from ``out_dir/last.pt`` when it exists.

    torch runs with ``train.threads`` intra-op threads (default: the thread policy,
    :func:`nfaudio.runtime.intra_op_threads`, leaving a core to each DataLoader worker) for this call only.
        seed: overrides ``cfg.train.seed`` (the CV loop passes ``seed + fold``).

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: empty train or validation set, or mismatched class lists.
    """
    threads = intra_op_threads(cfg.train.threads, workers=cfg.data.num_workers)
    with torch_threads(threads), distributed(cfg.train.device):  # the thread policy; torchrun's process group
        return _fit(cfg, train_set, val_set, out_dir, resume, seed)


def _fit(cfg: Config, train_set: Manifest, val_set: Manifest | None, out_dir: str | Path, resume: bool,
         seed: int | None) -> FitResult:
    w = world()
    run = RunDir(out_dir)
    if w.is_main:
        run.create()
    if len(train_set) == 0 or (val_set is not None and len(val_set) == 0):
        n_val = len(val_set) if val_set is not None else 0
        raise ValueError(f"empty split: {len(train_set)} training and {n_val} validation rows")
    if val_set is not None and list(train_set.classes) != list(val_set.classes):
        raise ValueError("training and validation manifests have different class lists")
    t = cfg.train
    seed = t.seed if seed is None else seed
    seed_everything(seed)
    device = device_for(w, resolve_device(t.device))
    classes = list(train_set.classes)
    activation = cfg.activation
    if w.is_main:
        run.write_info(cfg, seed=seed, classes=classes, device=str(device), world_size=w.size)

    model = build_model(cfg, len(classes)).to(device)
    step_model = wrap(model, w, device, find_unused=t.freeze_backbone_epochs > 0)  # DDP under torchrun
    transform = build_augment(cfg)
    a = cfg.audio
    cache = build_cache(cfg, train_set.df["path"].astype(str).tolist()
                        + (val_set.df["path"].astype(str).tolist() if val_set is not None else []))
    train_ds = AudioDataset(train_set, sample_rate=a.sample_rate, duration=a.duration, train=True,
                            transform=transform, secondary_weight=cfg.loss.secondary_weight,
                            label_smoothing=cfg.loss.label_smoothing, use_rating=t.use_rating, seed=seed, cache=cache)
    if cfg.pseudo.labels:  # training rows only: validation stays labelled
        p = cfg.pseudo
        train_ds = pseudo_training_set(train_ds, p.labels, classes, mode=p.mode, sample_rate=a.sample_rate,
                                       duration=a.duration, weight=p.weight, mix_weight=p.mix_weight, mix_p=p.mix_p,
                                       mix_rule=p.mix_rule, sampling=p.sample, transform=transform, seed=seed)
    use_weights = t.use_rating or (bool(cfg.pseudo.labels) and cfg.pseudo.mode == "rows")
    distiller = None
    if cfg.distill.teacher:
        d = cfg.distill
        distiller = Distiller(load_teacher(d.teacher, classes, a.sample_rate), d.loss, d.temperature,
                              d.alpha).to(device)
        log.info("distilling from %s (%d model(s), %s, T=%g, alpha=%g)", d.teacher, len(distiller.teachers),
                 d.loss, d.temperature, d.alpha)
    if val_set is not None:
        val_ds = AudioDataset(val_set, sample_rate=a.sample_rate, duration=a.duration, train=False,
                              secondary_weight=1.0, crop=a.eval_crop, cache=cache)
        val_targets = (encode_targets(val_set, secondary_weight=1.0) > 0).astype(np.float32)
    metric = get_metric(t.metric)
    loss_fn = ClipFrameLoss(cfg.loss.name, cfg.loss.frame_weight, cfg.loss.focal_gamma, cfg.loss.focal_alpha)
    mixup = Mixup(alpha=cfg.augment.mixup_alpha, p=cfg.augment.mixup_p, rule=cfg.augment.mixup_rule)
    sample_weights = (class_balanced_weights(train_set, alpha=t.balanced_alpha)
                      if t.balanced_alpha is not None else None)
    if sample_weights is not None and len(train_ds) > len(sample_weights):  # pseudo rows: an average row's chance
        extra = np.full(len(train_ds) - len(sample_weights), sample_weights.mean())
        sample_weights = np.concatenate([sample_weights, extra])

    workers = cfg.data.num_workers
    loader_kw = dict(num_workers=workers, worker_init_fn=worker_init if workers else None,
                     pin_memory=device.type == "cuda")
    per_rank = math.ceil(len(train_ds) / w.size)  # rows each rank trains on per epoch
    drop_last = per_rank > t.batch_size  # never an epoch of zero steps
    steps_per_epoch = loader_steps(per_rank, t.batch_size)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    opt_steps_per_epoch = max(1, steps_per_epoch // t.accum_steps)
    epochs = epochs_for(t.epochs, t.min_steps, opt_steps_per_epoch)
    if epochs > t.epochs:
        log.info("train.min_steps %d: %d epochs of %d optimizer steps (train.epochs %d)", t.min_steps, epochs,
                 opt_steps_per_epoch, t.epochs)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(
        epochs * opt_steps_per_epoch, int(cfg.schedule.warmup_epochs * opt_steps_per_epoch),
        cfg.schedule.min_lr_ratio))
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    use_agc = cfg.optim.agc if cfg.optim.agc is not None else is_normalizer_free(model.backbone)
    agc = AGC(agc_parameters(model), cfg.optim.agc_clip, cfg.optim.agc_eps) if use_agc else None
    ema = None
    if t.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=t.ema_decay)
    log.info("training %s in %s: %d train / %d val clips, %d classes, AGC %s, device %s%s", cfg.model.name,
             run.path, len(train_set), len(val_set) if val_set is not None else 0, len(classes),
             "on" if agc else "off", device, f", {w.size} processes" if w.enabled else "")

    loader, sampler = train_loader(train_ds, t.batch_size, seed, w, sample_weights, drop_last, **loader_kw)
    start_epoch, best_score, best_epoch, history, bad_epochs = 0, -math.inf, -1, [], 0
    state = run.load_state(map_location=device) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, best_score, best_epoch = state["epoch"] + 1, state["best_score"], state["best_epoch"]
        history, bad_epochs = state["history"], state["bad_epochs"]
        set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d", run.path, start_epoch)
    logger = HistoryLogger(run.file(RunDir.HISTORY), cfg, history) if w.is_main else None

    for epoch in range(start_epoch, epochs):
        if bad_epochs and t.early_stop_patience and bad_epochs >= t.early_stop_patience:
            break
        frozen = epoch < t.freeze_backbone_epochs
        for p in model.backbone.parameters():
            p.requires_grad_(not frozen)
        sampler.set_epoch(epoch)  # the workers read the epoch from each index (persistent workers)
        mix_gen = torch.Generator().manual_seed(seed * 1000 + epoch + 1)
        model.train()
        t0, seen, running = time.perf_counter(), 0, 0.0
        bar = _progress(loader, steps_per_epoch, f"epoch {epoch + 1}/{epochs}", t.progress and w.is_main)
        optimizer.zero_grad(set_to_none=True)
        for step, (wave, target, weight, _) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            wave, target, weight = wave.to(device), target.to(device), weight.to(device)
            wave, target, weight = mixup(wave, target, weight, generator=mix_gen)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                out = step_model(wave)
            loss = loss_fn(out.clip, out.frame, target, weight if use_weights else None)
            if distiller is not None:
                loss = distiller(loss, out.clip, wave, weight if use_weights else None)
            scaler.scale(loss / t.accum_steps).backward()
            if (step + 1) % t.accum_steps == 0 or step + 1 == steps_per_epoch:
                if agc is not None:
                    agc.clip_(scaler if use_amp else None, optimizer)
                if cfg.optim.clip_grad_norm:  # plain global-norm clipping (AGC has unscaled already)
                    if use_amp and agc is None:
                        scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update(model)
            running += float(loss.detach()) * len(wave)
            seen += len(wave)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{running / seen:.4f}", clips_s=f"{seen / (time.perf_counter() - t0):.1f}")
        train_time = time.perf_counter() - t0
        running, seen = reduce_sum([running, seen], w)  # over every rank's share
        eval_model = ema.module if ema is not None else model
        if val_set is not None:
            val_loss, probs, _ = evaluate_rows(eval_model, val_ds, loss_fn, device, activation,
                                               t.eval_batch_size or t.batch_size, loader_kw, w)
            score = float(metric(val_targets, probs))
            improved = score > best_score
        else:  # no validation: no score; the latest epoch is the model kept
            val_loss, score, improved = math.nan, math.nan, True
        row = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "val_loss": val_loss, "val_score": score,
               "lr": optimizer.param_groups[-1]["lr"], "clips_per_s": seen / train_time}
        history.append(row)
        if logger is not None:
            logger.log(row)
        log.info("epoch %d: train_loss %.4f val_loss %.4f %s %.4f (%.1f clips/s)", epoch + 1,
                 row["train_loss"], val_loss, t.metric, score, row["clips_per_s"])
        if improved:
            best_score, best_epoch, bad_epochs = (score if val_set is not None else best_score), epoch + 1, 0
        else:
            bad_epochs += 1
        if (improved or t.select == "last") and w.is_main:
            save_model(eval_model, run.best, classes=classes, epoch=epoch + 1,
                       score=score if val_set is not None else None, metric=t.metric, duration=a.duration,
                       activation=activation)
        if w.is_main:
            run.save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                            "ema": ema.state_dict() if ema is not None else None, "epoch": epoch,
                            "best_score": best_score, "best_epoch": best_epoch, "history": history,
                            "bad_epochs": bad_epochs, "rng": get_rng_state()})
    if logger is not None:
        if history:
            plot_curves(history, run.file(RunDir.CURVES))
            logger.log_curves(run.file(RunDir.CURVES), int(history[-1]["epoch"]))
        logger.close()
    barrier(w)  # every rank returns once rank 0 has written best.pt and last.pt
    if val_set is None:
        return FitResult(best_score=None, best_epoch=best_epoch, history=history, out_dir=run.path)
    if t.select == "last" and history:
        best_score, best_epoch = history[-1]["val_score"], int(history[-1]["epoch"])
    return FitResult(best_score=best_score, best_epoch=best_epoch, history=history, out_dir=run.path)


def loader_steps(rows: int, batch_size: int) -> int:
    """The batches an epoch's training loader gives for ``rows`` rows (per process): the last partial batch is
    dropped when there is more than one batch, and a set of at most one batch is one step."""
    return rows // batch_size if rows > batch_size else 1


def epochs_for(epochs: int, min_steps: int | None, opt_steps_per_epoch: int) -> int:
    """The epochs a run trains: ``epochs`` (``train.epochs``), raised to ``ceil(min_steps / opt_steps_per_epoch)``
    when ``min_steps`` (``train.min_steps``) asks for more optimizer steps than those epochs give (a small training
    set then gets as many steps as a large one). ``None`` or 0: no floor.

    Raises:
        ValueError: a negative ``min_steps``.
    """
    if min_steps is not None and min_steps < 0:
        raise ValueError(f"train.min_steps must be a number of optimizer steps >= 0 (null: no floor), got {min_steps}")
    if not min_steps:
        return epochs
    return max(epochs, -(-int(min_steps) // max(1, opt_steps_per_epoch)))


def _progress(loader: DataLoader, total: int, desc: str, enabled: bool):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True)


def train_from_config(cfg: Config, out_dir: str | Path, resume: bool = False) -> FitResult:
    """Load the recipe's data, split it (split column, or fold ``train.val_fold`` of the run's ``folds.csv``,
    assigned once and reused on resume) and :func:`fit`.

    Raises:
        ValueError: an unknown model name (before any data is read), or a ``folds.csv`` made for other data.
        ConfigError, ManifestError: see :func:`nfaudio.data.load_data`.
    """
    check_model(cfg)
    run = RunDir(out_dir)
    with distributed(cfg.train.device) as w:
        manifest = load_data(cfg)
        folds = None if cfg.data.split_column else shared_folds(cfg, manifest, run, w)
        train_set, val_set = split_train_val(cfg, manifest, folds)
        return fit(cfg, train_set, val_set, run.path, resume=resume)


def shared_folds(cfg: Config, manifest: Manifest, run: RunDir, w: World) -> np.ndarray:
    """:func:`~nfaudio.folds.run_folds` under torchrun: rank 0 assigns and writes ``folds.csv``, the other ranks
    read it once it exists."""
    folds = run_folds(cfg, manifest, run.create()) if w.is_main else None
    barrier(w)
    return folds if folds is not None else run_folds(cfg, manifest, run)
