"""What a training run records: ``history.csv`` (always), TensorBoard and Weights & Biases (when asked for), and
the loss/metric curves as a PNG.

Both loggers get what ``history.csv`` holds (every column, one step per epoch: the step is the epoch number), the
resolved config (TensorBoard: a text summary ``config``; W&B: the run config) and ``curves.png`` (an image
``curves`` at the last epoch). TensorBoard writes under ``out/tb``, W&B under ``out/wandb``. W&B runs offline
unless ``WANDB_MODE`` says otherwise, so a run never needs the network or a login. A resumed training run
continues the same W&B run (its id and last logged epoch are kept in ``out/wandb/nfaudio-run-id``; an epoch
it already holds is not logged again) and the same TensorBoard step sequence (events of the epochs being redone
are purged), so no step is logged twice.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from nfaudio.config import Config, ConfigError
from nfaudio.fileio import write_text

__all__ = ["HistoryLogger", "plot_curves"]

log = logging.getLogger(__name__)

WANDB_ID_FILE = "nfaudio-run-id"


class HistoryLogger:
    """history.csv always; TensorBoard / Weights & Biases when the recipe asks for them.

    Args:
        path: the run's ``history.csv``.
        cfg: the resolved config (logged to both).
        history: the rows of the epochs already done (a resumed run); ``history.csv`` is rewritten from them, so
            an epoch logged but not checkpointed before a crash is not kept twice.
    """

    def __init__(self, path: Path, cfg: Config, history: Sequence[dict[str, float]] = ()) -> None:
        self.path = path
        out_dir = path.parent
        resumed = bool(history)
        self.tb = self.wandb = None
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("train.tensorboard=true needs the 'tensorboard' package") from exc
            tb_dir = out_dir / "tb"
            if not resumed and tb_dir.exists():
                shutil.rmtree(tb_dir)  # a fresh run: events of an earlier attempt would mix in
            first_step = int(history[-1]["epoch"]) + 1 if resumed else None
            self.tb = SummaryWriter(str(tb_dir), purge_step=first_step)
            if not resumed:
                text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
                self.tb.add_text("config", "```yaml\n" + text + "```", global_step=0)
        if cfg.train.wandb:
            try:
                import wandb
            except ImportError as exc:
                raise ConfigError("train.wandb=true needs the 'wandb' package (offline unless WANDB_MODE says "
                                  "otherwise)") from exc
            self.wandb = _init_wandb(wandb, out_dir, cfg, resumed)
            self._wandb_id_file = out_dir / "wandb" / WANDB_ID_FILE
            fields = self._wandb_id_file.read_text().split() if resumed else []
            self._wandb_done = int(fields[1]) if len(fields) > 1 else 0  # the last epoch this W&B run holds
        self._rewrite(history)

    def _rewrite(self, history: Sequence[dict[str, float]]) -> None:
        if not history:
            self.path.unlink(missing_ok=True)
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        write_text(self.path, buf.getvalue())

    def log(self, row: dict[str, float]) -> None:
        """One epoch's row: appended to history.csv, every column a scalar at step ``epoch`` in both loggers."""
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row), lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(row)
        step = int(row["epoch"])
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            if step <= self._wandb_done:  # logged before a crash that came ahead of the checkpoint
                log.debug("W&B already holds epoch %d", step)
                return
            self.wandb.log(dict(row), step=step)
            self._wandb_done = step
            write_text(self._wandb_id_file, f"{self.wandb.id} {step}\n")

    def log_curves(self, path: Path, epoch: int) -> None:
        """The curves PNG as the image ``curves`` at step ``epoch``."""
        if self.tb is not None:
            from matplotlib.image import imread

            image = imread(str(path))[..., :3]  # RGBA floats in [0, 1] -> RGB
            self.tb.add_image("curves", image, epoch, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({"curves": wandb.Image(str(path))}, step=epoch)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _init_wandb(wandb: Any, out_dir: Path, cfg: Config, resumed: bool) -> Any:
    """A W&B run under ``out/wandb``: offline unless ``WANDB_MODE`` is set, never a login prompt; a resumed
    training run reuses its W&B run id."""
    wb_dir = out_dir / "wandb"
    wb_dir.mkdir(parents=True, exist_ok=True)
    id_file = wb_dir / WANDB_ID_FILE
    run_id = id_file.read_text().split()[0] if resumed and id_file.is_file() else ""
    if not run_id:
        run_id = secrets.token_hex(6)  # a W&B run id: lowercase letters and digits
        write_text(id_file, run_id + "\n")
    mode = os.environ.get("WANDB_MODE") or "offline"
    log.info("W&B run %s (%s) in %s", run_id, mode, wb_dir)
    settings = wandb.Settings(console="off", silent=True)
    return wandb.init(dir=str(out_dir), id=run_id, resume="allow", mode=mode, config=cfg.to_dict(),
                      project=os.environ.get("WANDB_PROJECT") or "nfaudio", name=out_dir.name,
                      settings=settings, reinit="finish_previous")


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
