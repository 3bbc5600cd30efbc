"""Run directories: :class:`RunDir` is the only code that knows the files of a training or CV run.

A training run (``nfaudio train``, one fold of ``nfaudio cv``) holds::

    config.yaml     the resolved recipe                  run.json      nfaudio version, git commit, seed, classes
    folds.csv       row id -> fold (written once)        history.csv   one row per epoch (+ curves.png)
    best.pt         the selected model (save_model)      last.pt       full training state for --resume

A CV run holds ``config.yaml``, ``run.json``, ``folds.csv``, one training run per fold (``fold<k>/``, each with a
``claim.json`` while a process trains it, and a ``done.json`` and its ``oof.csv`` once finished), the pooled
``oof.csv``, ``metrics.json`` and, with ``--full``, a model trained on every row in ``full/``. Prediction
takes its defaults from the run's ``predict`` section.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nfaudio
from nfaudio.config import Config, ConfigError, PredictConfig, dump_config, load_config
from nfaudio.fileio import torch_save, write_csv, write_json

__all__ = ["RunDir", "find_checkpoints", "git_commit", "run_of"]

log = logging.getLogger(__name__)

_FOLD_DIR = re.compile(r"fold(\d+)$")


def git_commit() -> str | None:
    """The commit of the nfaudio checkout, when it is one."""
    root = Path(nfaudio.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunDir:
    """One run directory (it need not exist yet); see the module docstring for its layout.

    Args:
        path: the directory.
    """

    CONFIG = "config.yaml"
    INFO = "run.json"
    FOLDS = "folds.csv"
    BEST = "best.pt"
    LAST = "last.pt"
    HISTORY = "history.csv"
    CURVES = "curves.png"
    OOF = "oof.csv"
    METRICS = "metrics.json"
    DONE = "done.json"
    CLAIM = "claim.json"
    FULL = "full"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------- layout
    def file(self, name: str) -> Path:
        """``path / name`` for one of the class constants (``RunDir.BEST`` ...)."""
        return self.path / name

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    def fold(self, k: int) -> RunDir:
        """The training run of fold ``k`` inside a CV run."""
        return RunDir(self.path / f"fold{int(k)}")

    @property
    def full(self) -> RunDir:
        """The all-rows model of a CV run (``--full``)."""
        return RunDir(self.path / self.FULL)

    def folds_trained(self) -> list[int]:
        """Folds of a CV run that have a ``best.pt``, sorted."""
        found = (_FOLD_DIR.fullmatch(p.name) for p in self.path.glob("fold*") if (p / self.BEST).is_file())
        return sorted(int(m.group(1)) for m in found if m)

    def create(self) -> RunDir:
        """Create the directory (and its parents); returns ``self``."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # ------------------------------------------------------------------------- config and run info
    def write_info(self, cfg: Config, **extra: Any) -> None:
        """Write the resolved ``config.yaml`` and ``run.json`` (nfaudio version, git commit, ``extra``)."""
        self.create()
        dump_config(cfg, self.file(self.CONFIG))
        info = {"nfaudio_version": nfaudio.__version__, "git_commit": git_commit(), **extra}
        write_json(self.file(self.INFO), info, default=str)

    def read_config(self) -> Config | None:
        """The run's resolved config, or None when it has none.

        Raises:
            ConfigError: ``config.yaml`` exists but is not a valid config.
        """
        path = self.file(self.CONFIG)
        return load_config(path) if path.is_file() else None

    def read_info(self) -> dict[str, Any]:
        """``run.json`` (empty when missing)."""
        path = self.file(self.INFO)
        return json.loads(path.read_text()) if path.is_file() else {}

    def predict_defaults(self) -> PredictConfig:
        """The ``predict`` section of this run's config; the built-in defaults when it has no readable config."""
        try:
            cfg = self.read_config()
        except ConfigError as err:
            log.warning("ignoring the predict settings of %s: %s", self.file(self.CONFIG), err)
            return PredictConfig()
        return cfg.predict if cfg is not None else PredictConfig()

    # ------------------------------------------------------------------------- folds
    def read_folds(self, row_ids: Sequence[str]) -> list[int] | None:
        """The fold of each of ``row_ids`` from ``folds.csv`` (None when the run has none).

        Raises:
            ValueError: ``folds.csv`` lacks some of ``row_ids``.
        """
        import pandas as pd

        path = self.file(self.FOLDS)
        if not path.is_file():
            return None
        table = pd.read_csv(path, dtype={"row_id": str}).set_index("row_id")["fold"]
        missing = sorted(set(row_ids) - set(table.index))
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} row ids of the data (e.g. {missing[:3]}): it was made "
                             "for other data; use a new output directory")
        return [int(f) for f in table.loc[list(row_ids)]]

    def write_folds(self, table: Any) -> None:
        """Write ``folds.csv`` (a DataFrame with ``row_id``, ``primary_label``, ``fold``) atomically."""
        write_csv(table, self.file(self.FOLDS))

    # ------------------------------------------------------------------------- checkpoints
    def load_model(self, which: str = BEST) -> tuple[Any, dict[str, Any]]:
        """``(model, metadata)`` of ``best.pt`` (or ``which``) through the one checkpoint loader,
        :func:`nfaudio.models.load_checkpoint`."""
        from nfaudio.models import load_checkpoint

        return load_checkpoint(self.file(which))

    def save_state(self, state: dict[str, Any]) -> None:
        """Write the training state (``last.pt``) atomically."""
        torch_save(state, self.last)

    def load_state(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The training state of ``last.pt`` (our own file, so not restricted to weights), or None."""
        if not self.last.is_file():
            return None
        import torch

        return torch.load(self.last, map_location=map_location, weights_only=False)

    def checkpoints(self) -> list[Path]:
        """The model files to score this path with; see :func:`find_checkpoints`."""
        return find_checkpoints(self.path)

    # ------------------------------------------------------------------------- CV bookkeeping
    def write_done(self, result: dict[str, Any]) -> None:
        """Mark a fold finished (``done.json``); written after its ``oof.csv``."""
        write_json(self.file(self.DONE), result)

    def is_done(self) -> bool:
        """A finished fold: ``done.json`` and ``oof.csv`` exist."""
        return self.file(self.DONE).is_file() and self.file(self.OOF).is_file()

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.file(self.METRICS), metrics)

    # ------------------------------------------------------------------------- claims (folds in parallel)
    def claim(self) -> dict[str, Any] | None:
        """Claim this fold for the calling process: ``claim.json`` is created atomically (``O_EXCL``), so of
        several processes on one fold exactly one wins. A claim left by a dead process on this host (killed,
        crashed) is taken over.

        Returns:
            None when the claim is ours; else the holder's claim (``host``, ``pid``, ``since``).
        """
        self.create()
        path = self.file(self.CLAIM)
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder(path)
                if holder is None:  # stale: its process is gone; remove and try again
                    log.warning("%s: taking over the claim of a process that no longer runs", self.path)
                    path.unlink(missing_ok=True)
                    continue
                return holder
            with os.fdopen(fd, "w") as fh:
                json.dump(mine, fh)
            return None
        return self._holder(path) or {"host": "?", "pid": -1}

    def release(self) -> None:
        """Drop this process's claim (a finished or failed fold)."""
        path = self.file(self.CLAIM)
        holder = self._holder(path, check_alive=False)
        if holder and holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
            path.unlink(missing_ok=True)

    @staticmethod
    def _holder(path: Path, check_alive: bool = True) -> dict[str, Any] | None:
        """The claim in ``path``; None when there is none, it is unreadable, or (``check_alive``) its process on
        this host has exited. A claim from another host is assumed alive."""
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if check_alive and holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder.get("pid", -1)), 0)
            except ProcessLookupError:
                return None
            except (PermissionError, ValueError, TypeError):
                pass
        return holder


def find_checkpoints(path: str | os.PathLike) -> list[Path]:
    """Model files of ``path``: a ``.pt``/``.onnx`` file, a run directory (``best.pt``), a CV directory
    (``fold*/best.pt``, ensembled) or a directory of exported ``*.onnx`` files.

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    run = RunDir(path)
    if run.best.is_file():
        return [run.best]
    folds = run.folds_trained()
    if folds:
        return [run.fold(k).best for k in folds]
    found = sorted(path.glob("*.onnx"))
    if found:
        return found
    raise FileNotFoundError(f"{path}: no checkpoint (expected a .pt/.onnx file, DIR/{RunDir.BEST}, "
                            f"DIR/fold*/{RunDir.BEST} or DIR/*.onnx)")


def run_of(model_path: str | os.PathLike) -> RunDir:
    """The run a model path belongs to: the directory itself, or the checkpoint's folder."""
    path = Path(model_path)
    return RunDir(path if path.is_dir() else path.parent)
