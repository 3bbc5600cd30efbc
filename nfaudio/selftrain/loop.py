"""Noisy-student self-training rounds (Xie et al. 2020, "Self-training with Noisy Student improves ImageNet
classification"; the BirdCLEF 2024-2025 winners' rounds over unlabelled soundscapes).

Round 0 trains the teacher on the labelled data of the recipe. Round ``k >= 1`` pseudo-labels the unlabelled
recordings with the previous round's model (:func:`~nfaudio.selftrain.pseudo.pseudo_label`) and trains a student
on the labelled data plus those pseudo-labels (recipe section ``pseudo``) with more noise than its teacher; the
student becomes the next teacher. Each round is a folder::

    OUT/round0/model/                the teacher's run (or CV run with ``cv=True``)
    OUT/round<k>/pseudo/             pseudo-labels of round k (from round k-1's model)
    OUT/round<k>/model/              round k's student
    OUT/round<k>/eval/               its predictions on the labelled evaluation audio (when given)
    OUT/round<k>/done.json           the round's figures; a finished round is never redone
    OUT/rounds.csv, rounds.json, rounds.png

Re-running the same call resumes: finished rounds are kept, the interrupted round continues (its training from
``last.pt``, its pseudo-labelling from its journal). The figures of a round are the recipe's validation metric
(the best epoch's, or the CV pooled out-of-fold score) and, with ``eval_audio`` + ``eval_labels`` (a
``row_id`` table such as BirdCLEF's soundscape labels), macro ROC-AUC and padded cmAP of the round's model on those
windows - the figure that shows whether the rounds help on the target domain.

The student's extra noise (``student_overrides``, dotted recipe keys applied from round 1 on) defaults to
drop-path ``+0.1`` over the recipe's (capped at 0.5) and SpecAugment on at least half of the samples.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from nfaudio.config import Config, apply_overrides, from_dict
from nfaudio.cv import run_cv
from nfaudio.fileio import write_csv, write_json
from nfaudio.metrics import score_submission
from nfaudio.models.registry import resolve_config
from nfaudio.predict import Predictor
from nfaudio.predict_run import run_prediction
from nfaudio.selftrain.pseudo import pseudo_label, read_pseudo_labels
from nfaudio.training import train_from_config
from nfaudio.training.build import frontend_kwargs

__all__ = ["default_student_overrides", "self_train"]

log = logging.getLogger(__name__)

ROUNDS_CSV, ROUNDS_JSON, ROUNDS_PNG, DONE = "rounds.csv", "rounds.json", "rounds.png", "done.json"


def default_student_overrides(cfg: Config) -> list[str]:
    """More noise than the teacher: drop-path + 0.1 (capped at 0.5; the variant's own rate when the recipe leaves
    it unset) and SpecAugment on at least half of the samples."""
    rate = cfg.model.drop_path_rate
    if rate is None:
        rate = resolve_config(cfg.model.name, num_classes=1, head=cfg.model.head,
                              frontend=frontend_kwargs(cfg)).drop_path_rate or 0.0
    return [f"model.drop_path_rate={min(0.5, round(rate + 0.1, 4))}",
            f"augment.specaug_p={max(cfg.augment.specaug_p, 0.5)}"]


def _with(cfg: Config, overrides: Sequence[str]) -> Config:
    return from_dict(apply_overrides(cfg.to_dict(), list(overrides)))


def _train(cfg: Config, out: Path, cv: bool) -> float:
    """Train (resuming an interrupted run) and return the validation figure of the run."""
    if cv:
        metrics = run_cv(cfg, out)
        return float(metrics["pooled_oof"][metrics["metric"]])
    result = train_from_config(cfg, out, resume=(out / "last.pt").is_file())
    return float(result.best_score) if result.best_score is not None else math.nan


def _evaluate(model_dir: Path, audio: Sequence[str | os.PathLike], labels: Path, out: Path,
              predict_kw: dict[str, Any]) -> dict[str, float]:
    predictor = Predictor.from_checkpoint(model_dir, **predict_kw)
    run_prediction(predictor, audio, out, formats=("submission",), progress=False)
    truth = pd.read_csv(labels, dtype={"row_id": str})
    submission = pd.read_csv(out / "submission.csv", dtype={"row_id": str})
    return {m: float(score_submission(truth, submission, m)) for m in ("macro_auc", "padded_cmap")}


def self_train(cfg: Config, unlabelled: Sequence[str | os.PathLike], out_dir: str | os.PathLike, rounds: int = 3,
               *, power: float = 1.0, floor: float = 0.0, top_k: int | None = None, cv: bool = False,
               student_overrides: Sequence[str] | None = None, eval_audio: Sequence[str | os.PathLike] = (),
               eval_labels: str | os.PathLike | None = None, predict_kw: dict[str, Any] | None = None,
               ) -> pd.DataFrame:
    """Run (or resume) ``rounds`` noisy-student rounds after the teacher (see the module docstring).

    Args:
        cfg: the recipe (its ``pseudo`` section's mode and mixing apply to every student; its ``labels`` are
            replaced by each round's pseudo-labels).
        unlabelled: files, folders or manifests of unlabelled recordings.
        out_dir: output folder.
        rounds: student rounds after round 0 (>= 0).
        power, floor, top_k: pseudo-label options (:func:`~nfaudio.selftrain.pseudo.pseudo_label`).
        cv: train each round as a K-fold CV (the fold ensemble pseudo-labels the next round).
        student_overrides: dotted recipe keys for the students (default :func:`default_student_overrides`).
        eval_audio, eval_labels: labelled evaluation recordings and their per-window ``row_id`` table.
        predict_kw: options of :meth:`Predictor.from_checkpoint` for pseudo-labelling and evaluation
            (window, hop, workers, backend ...; the window defaults to the recipe's ``audio.duration``).

    Returns:
        The rounds table (also written to ``rounds.csv``/``rounds.json``, plotted in ``rounds.png``).

    Raises:
        ValueError: ``rounds < 0``, or evaluation audio without labels (or the reverse).
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if bool(eval_audio) != (eval_labels is not None):
        raise ValueError("give both eval_audio and eval_labels, or neither")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predict_kw = {"window": cfg.audio.duration, **(predict_kw or {})}
    overrides = list(student_overrides) if student_overrides is not None else default_student_overrides(cfg)
    rows: list[dict[str, Any]] = []
    for k in range(rounds + 1):
        here = out / f"round{k}"
        done = here / DONE
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            log.info("self-training round %d: done earlier (%s)", k, done)
            continue
        t0 = time.perf_counter()
        row: dict[str, Any] = {"round": k, "pseudo_windows": 0, "pseudo_kept": 0}
        round_cfg = dataclasses.replace(cfg, pseudo=dataclasses.replace(cfg.pseudo, labels=[]))
        if k > 0:
            teacher = out / f"round{k - 1}" / "model"
            predictor = Predictor.from_checkpoint(teacher, **predict_kw)
            pseudo_label(predictor, unlabelled, here / "pseudo", power=power, floor=floor, top_k=top_k,
                         progress=False)
            labels = read_pseudo_labels(here / "pseudo")
            row.update(pseudo_windows=int(labels.files["windows"].sum()), pseudo_kept=len(labels.table))
            round_cfg = _with(cfg, overrides)
            round_cfg = dataclasses.replace(round_cfg, pseudo=dataclasses.replace(round_cfg.pseudo,
                                                                                   labels=[str(here / "pseudo")]))
        row["val_score"] = _train(round_cfg, here / "model", cv)
        row["val_metric"] = cfg.train.metric
        if eval_audio:
            row.update(_evaluate(here / "model", eval_audio, Path(eval_labels), here / "eval", predict_kw))
        row["seconds"] = time.perf_counter() - t0
        write_json(done, row)
        rows.append(row)
        log.info("self-training round %d: %s", k, row)
    table = pd.DataFrame(rows)
    write_csv(table, out / ROUNDS_CSV, lineterminator="\n")
    write_json(out / ROUNDS_JSON, {"rounds": rows, "power": power, "floor": floor, "top_k": top_k, "cv": cv,
                                   "student_overrides": overrides})
    _plot(table, out / ROUNDS_PNG)
    return table


def _plot(table: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    from nfaudio.fileio import atomic_path

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for column in ("val_score", "macro_auc", "padded_cmap"):
        if column in table:
            ax.plot(table["round"], table[column], marker="o", label=column)
    ax.set_xlabel("round (0: teacher on labelled data only)")
    ax.set_ylabel("score")
    ax.set_xticks(list(table["round"]))
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
