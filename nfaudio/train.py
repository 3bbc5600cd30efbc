"""Fit one train/validation split: the nfaudio trainer.

NFNets (Brock et al. 2021) are trained with SGD-Nesterov and Adaptive Gradient Clipping; AGC is on by
default whenever the backbone holds no BatchNorm layer (derived from the modules, not the name).
The last checkpoint holds everything needed to resume exactly: model, optimizer, scheduler, scaler,
EMA, epoch, history and RNG states. Data order and crops are seeded by ``(seed, epoch)``, so a run
resumed after epoch ``k`` ends with the same weights as an uninterrupted one (on CPU).
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from nfaudio.agc import AGC, agc_parameters
from nfaudio.augment import Mixup
from nfaudio.config import Config, ConfigError
from nfaudio.data import AudioDataset, Manifest, class_balanced_weights, encode_targets
from nfaudio.fileio import torch_save, write_csv
from nfaudio.losses import ClipFrameLoss
from nfaudio.metrics import get_metric
from nfaudio.models import AudioClassifier, save_model
from nfaudio.runs import build_augment, build_model, write_run_info

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit` returns: best score, epoch it was reached, and the per-epoch history."""

    best_score: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    out_dir: Path | None = None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code draws from the legacy global state
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    """Per-worker seeding: NumPy and ``random`` from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)


def is_normalizer_free(module: nn.Module) -> bool:
    """True when the module holds no batch-norm layer (NFNets; AGC replaces what BN provided)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def cosine_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` (a LambdaLR multiplier)."""

    def fn(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def build_optimizer(model: AudioClassifier, cfg: Config) -> torch.optim.Optimizer:
    """SGD-Nesterov or AdamW; backbone at ``lr * backbone_lr_mult``; no weight decay on 1-D params."""
    o = cfg.optim
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    for p in model.parameters():
        key = (id(p) in backbone_ids, p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    param_groups = [
        {"params": ps, "lr": o.lr * (o.backbone_lr_mult if is_bb else 1.0),
         "weight_decay": 0.0 if no_decay else o.weight_decay}
        for (is_bb, no_decay), ps in sorted(groups.items())
    ]
    if o.name == "sgd":
        return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    if o.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=o.lr)
    raise ValueError(f"unknown optimizer '{o.name}'; choose sgd or adamw")


class _Logger:
    """history.csv always; TensorBoard / Weights & Biases when asked for (offline modes work)."""

    def __init__(self, out_dir: Path, cfg: Config, resume: bool) -> None:
        self.path = out_dir / "history.csv"
        self.tb = self.wandb = None
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("train.tensorboard=true needs the 'tensorboard' package") from exc
            self.tb = SummaryWriter(str(out_dir / "tb"))
        if cfg.train.wandb:
            try:
                import wandb
            except ImportError as exc:
                raise ConfigError("train.wandb=true needs the 'wandb' package (WANDB_MODE=offline works)") from exc
            self.wandb = wandb.init(dir=str(out_dir), config=cfg.to_dict(), resume="allow")
        if not resume and self.path.exists():
            self.path.unlink()

    def log(self, row: dict[str, float]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.tb.add_scalar(k, v, int(row["epoch"]))
        if self.wandb is not None:
            self.wandb.log(row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss and metric per epoch to a PNG (a bare Figure: the caller's pyplot backend is left alone)."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, [h["val_score"] for h in history], color="C2")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation metric")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, loss_fn: ClipFrameLoss, device: torch.device,
             single_label: bool) -> tuple[float, np.ndarray, list[str]]:
    """Validation loss, class probabilities ``(N, C)`` and row ids, in loader order."""
    model.eval()
    total, count, probs, ids = 0.0, 0, [], []
    for wave, target, _weight, row_id in loader:
        wave, target = wave.to(device), target.to(device)
        out = model(wave)
        total += float(loss_fn(out.clip, out.frame, target)) * len(wave)
        count += len(wave)
        p = torch.softmax(out.clip.float(), -1) if single_label else torch.sigmoid(out.clip.float())
        probs.append(p.cpu().numpy())
        ids.extend(row_id)
    return total / max(count, 1), np.concatenate(probs), ids


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(cfg: Config, train_set: Manifest, val_set: Manifest | None, out_dir: str | Path,
        resume: bool = False, seed: int | None = None) -> FitResult:
    """Train on ``train_set``, validate on ``val_set`` every epoch, checkpoint into ``out_dir``.

    Args:
        cfg: the resolved recipe.
        train_set, val_set: manifests sharing one class list. ``val_set=None`` trains on everything
            without validation (the CV ``--full`` model): ``best.pt`` is then the last epoch's model.
        out_dir: run directory (``best.pt``, ``last.pt``, ``history.csv``, ``curves.png``).
        resume: continue from ``out_dir/last.pt`` when it exists.
        seed: overrides ``cfg.train.seed`` (the CV loop passes ``seed + fold``).

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: empty train or validation set, or mismatched class lists.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0 or (val_set is not None and len(val_set) == 0):
        n_val = len(val_set) if val_set is not None else 0
        raise ValueError(f"empty split: {len(train_set)} training and {n_val} validation rows")
    if val_set is not None and list(train_set.classes) != list(val_set.classes):
        raise ValueError("training and validation manifests have different class lists")
    t = cfg.train
    if t.select not in ("best", "last"):
        raise ConfigError(f"train.select must be 'best' or 'last', got {t.select!r}")
    seed = t.seed if seed is None else seed
    seed_everything(seed)
    device = resolve_device(t.device)
    classes = list(train_set.classes)
    single_label = cfg.loss.name == "ce"
    write_run_info(out_dir, cfg, extra={"seed": seed, "classes": classes, "device": str(device)})

    model = build_model(cfg, len(classes)).to(device)
    transform = build_augment(cfg)
    a = cfg.audio
    train_ds = AudioDataset(train_set, sample_rate=a.sample_rate, duration=a.duration, train=True,
                            transform=transform, secondary_weight=cfg.loss.secondary_weight,
                            label_smoothing=cfg.loss.label_smoothing, use_rating=t.use_rating, seed=seed)
    if val_set is not None:
        val_ds = AudioDataset(val_set, sample_rate=a.sample_rate, duration=a.duration, train=False,
                              secondary_weight=1.0, crop=a.eval_crop)
        val_targets = (encode_targets(val_set, secondary_weight=1.0) > 0).astype(np.float32)
    metric = get_metric(t.metric)
    loss_fn = ClipFrameLoss(cfg.loss.name, cfg.loss.frame_weight, cfg.loss.focal_gamma, cfg.loss.focal_alpha)
    mixup = Mixup(alpha=cfg.augment.mixup_alpha, p=cfg.augment.mixup_p, rule=cfg.augment.mixup_rule)
    sample_weights = (class_balanced_weights(train_set, alpha=t.balanced_alpha)
                      if t.balanced_alpha is not None else None)

    workers = cfg.data.num_workers
    loader_kw = dict(num_workers=workers, worker_init_fn=_worker_init if workers else None,
                     pin_memory=device.type == "cuda")
    steps_per_epoch = math.ceil(len(train_ds) / t.batch_size)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    opt_steps_per_epoch = max(1, steps_per_epoch // t.accum_steps)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(
        t.epochs * opt_steps_per_epoch, int(cfg.schedule.warmup_epochs * opt_steps_per_epoch),
        cfg.schedule.min_lr_ratio))
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    use_agc = cfg.optim.agc if cfg.optim.agc is not None else is_normalizer_free(model.backbone)
    agc = AGC(agc_parameters(model), cfg.optim.agc_clip, cfg.optim.agc_eps) if use_agc else None
    ema = None
    if t.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=t.ema_decay)
    log.info("training %s in %s: %d train / %d val clips, %d classes, AGC %s, device %s", cfg.model.name,
             out_dir, len(train_set), len(val_set) if val_set is not None else 0, len(classes),
             "on" if agc else "off", device)

    start_epoch, best_score, best_epoch, history, bad_epochs = 0, -math.inf, -1, [], 0
    last_path = out_dir / "last.pt"
    if resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, best_score, best_epoch = state["epoch"] + 1, state["best_score"], state["best_epoch"]
        history, bad_epochs = state["history"], state["bad_epochs"]
        _set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d", out_dir, start_epoch)
    logger = _Logger(out_dir, cfg, resume=start_epoch > 0)

    for epoch in range(start_epoch, t.epochs):
        if bad_epochs and t.early_stop_patience and bad_epochs >= t.early_stop_patience:
            break
        frozen = epoch < t.freeze_backbone_epochs
        for p in model.backbone.parameters():
            p.requires_grad_(not frozen)
        train_ds.set_epoch(epoch)
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        drop_last = len(train_ds) > t.batch_size  # never an epoch of zero steps
        if sample_weights is not None:
            sampler = torch.utils.data.WeightedRandomSampler(
                sample_weights, num_samples=len(train_ds), replacement=True, generator=gen)
            loader = DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler, drop_last=drop_last,
                                **loader_kw)
        else:
            loader = DataLoader(train_ds, batch_size=t.batch_size, shuffle=True, generator=gen,
                                drop_last=drop_last, **loader_kw)
        mix_gen = torch.Generator().manual_seed(seed * 1000 + epoch + 1)
        model.train()
        t0, seen, running = time.perf_counter(), 0, 0.0
        bar = _progress(loader, steps_per_epoch, f"epoch {epoch + 1}/{t.epochs}", t.progress)
        optimizer.zero_grad(set_to_none=True)
        for step, (wave, target, weight, _) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            wave, target, weight = wave.to(device), target.to(device), weight.to(device)
            wave, target, weight = mixup(wave, target, weight, generator=mix_gen)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                out = model(wave)
            loss = loss_fn(out.clip, out.frame, target, weight if t.use_rating else None)
            scaler.scale(loss / t.accum_steps).backward()
            if (step + 1) % t.accum_steps == 0 or step + 1 == steps_per_epoch:
                if agc is not None:
                    agc.clip_(scaler if use_amp else None, optimizer)
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
        eval_model = ema.module if ema is not None else model
        if val_set is not None:
            val_loader = DataLoader(val_ds, batch_size=t.eval_batch_size or t.batch_size, shuffle=False,
                                    **loader_kw)
            val_loss, probs, _ = evaluate(eval_model, val_loader, loss_fn, device, single_label)
            score = float(metric(val_targets, probs))
        else:
            val_loss, score = math.nan, float(epoch)  # no validation: the latest epoch is the "best"
        row = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "val_loss": val_loss,
               "val_score": score if val_set is not None else math.nan,
               "lr": optimizer.param_groups[-1]["lr"], "clips_per_s": seen / train_time}
        history.append(row)
        logger.log(row)
        log.info("epoch %d: train_loss %.4f val_loss %.4f %s %.4f (%.1f clips/s)", epoch + 1,
                 row["train_loss"], val_loss, t.metric, score, row["clips_per_s"])
        improved = score > best_score
        if improved:
            best_score, best_epoch, bad_epochs = score, epoch + 1, 0
        else:
            bad_epochs += 1
        if improved or t.select == "last":
            save_model(eval_model, out_dir / "best.pt", classes=classes, epoch=epoch + 1, score=score,
                       metric=t.metric, duration=a.duration, activation="softmax" if single_label else "sigmoid")
        torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                      "ema": ema.state_dict() if ema is not None else None, "epoch": epoch,
                      "best_score": best_score, "best_epoch": best_epoch, "history": history,
                      "bad_epochs": bad_epochs, "rng": _rng_state()}, last_path)
    logger.close()
    if history:
        plot_curves(history, out_dir / "curves.png")
    if t.select == "last" and history and val_set is not None:
        best_score, best_epoch = history[-1]["val_score"], int(history[-1]["epoch"])
    return FitResult(best_score=best_score, best_epoch=best_epoch, history=history, out_dir=out_dir)


def _progress(loader: DataLoader, total: int, desc: str, enabled: bool):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True)


def train_from_config(cfg: Config, out_dir: str | Path, resume: bool = False) -> FitResult:
    """Load the recipe's data, split it (split column or fold ``train.val_fold``) and :func:`fit`.

    Writes ``folds.csv`` when the split comes from a fold assignment.
    """
    from nfaudio.folds import assign_folds
    from nfaudio.runs import load_data, split_train_val

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_data(cfg)
    folds = None
    if not cfg.data.split_column:
        folds = assign_folds(manifest, cfg.cv.n_folds, cfg.cv.strategy, cfg.cv.group_column, cfg.train.seed)
        table = manifest.df[["row_id", "primary_label"]].assign(fold=folds)
        write_csv(table, out_dir / "folds.csv")
    train_set, val_set = split_train_val(cfg, manifest, folds)
    return fit(cfg, train_set, val_set, out_dir, resume=resume)
