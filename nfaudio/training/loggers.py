"""What a training run records: ``history.csv`` (always), TensorBoard and Weights & Biases (when asked for), and
the loss/metric curves as a PNG."""

from __future__ import annotations

import csv
from pathlib import Path

from nfaudio.config import Config, ConfigError

__all__ = ["HistoryLogger", "plot_curves"]


class HistoryLogger:
    """history.csv always; TensorBoard / Weights & Biases when asked for (offline modes work)."""

    def __init__(self, path: Path, cfg: Config, resume: bool) -> None:
        self.path = path
        out_dir = path.parent
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
