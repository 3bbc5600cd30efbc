"""``nfaudio study small-data``: a few clips per class, no pretrained weights (the offline bioacoustics case).

Brock et al. 2021 train NFNets on ImageNet or fine-tune them from it; a user offline with a few dozen clips per
class trains from scratch. For each held-out group (a fold of the recipe's ``cv`` section: for FSDD one speaker),
the study draws ``n`` clips per class from the other groups (nested: the 5-clip set is inside the 10-clip set,
one random order per fold, seeded) and trains a grid of settings on them through nfaudio's trainer: model size,
learning rate, training budget and augmentation strength (``none``: every augmentation off; ``recipe``: the
recipe's; ``strong``: :data:`STRONG_AUGMENT`). The budget is a number of optimizer steps (default), turned into
epochs for each training set (``ceil(steps / steps per epoch)``), so that 5 clips per class train as many steps
as 30 do: an epoch count alone gives a 50-clip set 3 steps an epoch at batch 16, and a few dozen steps in all
leave any net near chance. ``epochs`` instead gives every set the same epochs. The model after the last epoch (no
selection on the held-out group) is scored on the held-out group's clips. Beside the nets, a classical baseline
on the same clips and folds: the recipe's log-mel spectrogram summarised per mel band (mean and standard
deviation over time), standardised, and a multinomial logistic regression (scikit-learn), which a net has to beat
to be worth its training. One cell is one (setting, fold); finished cells are kept on a re-run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

from nfaudio.config import Config
from nfaudio.study.framework import Study, markdown_table

__all__ = ["AUGMENT_LEVELS", "BASELINE", "STRONG_AUGMENT", "augment_level", "epochs_for_steps", "logmel_features",
           "nested_subset", "run"]

log = logging.getLogger(__name__)

DEFAULT_SIZES = (5, 10, 30)
# The default grid is the one README's figures come from: 24 cells + 6 baseline fits, about 30 min on 2 cores.
DEFAULT_MODELS = ("nfaudio_small",)
DEFAULT_LRS = (3e-3,)
DEFAULT_STEPS = (250, 1000)
DEFAULT_AUGMENTS = ("none", "recipe")
FULL_MODELS = ("nfaudio_tiny", "nfaudio_small")
FULL_LRS = (5e-4, 1e-3, 3e-3, 1e-2)
FULL_STEPS = (100, 300, 1000, 3000)
FULL_AUGMENTS = ("none", "recipe", "strong")
BASELINE = "logmel_logreg"  # the classical baseline's name in the model column

_OFF = dict(gain_p=0.0, shift_p=0.0, noise_p=0.0, background_p=0.0, mixup_p=0.0, specaug_p=0.0)
# Every waveform augmentation on most clips, two SpecAugment masks on most clips, mixup with soft targets.
STRONG_AUGMENT = dict(gain_p=0.8, gain_db=6.0, shift_p=0.8, noise_p=0.5, noise_snr=(10.0, 30.0), mixup_p=0.5,
                      mixup_alpha=0.5, mixup_rule="weighted", specaug_p=0.8, specaug_masks=2)
AUGMENT_LEVELS = ("none", "recipe", "strong")


def augment_level(cfg: Config, level: str) -> Config:
    """The recipe with augmentation ``none`` (all off), ``recipe`` (as is) or ``strong`` (:data:`STRONG_AUGMENT`;
    SpecAugment widths stay the recipe's, they are in frames and mel bins)."""
    if level not in AUGMENT_LEVELS:
        raise ValueError(f"unknown augmentation level {level!r}; choose from {', '.join(AUGMENT_LEVELS)}")
    changes = {"none": _OFF, "recipe": {}, "strong": STRONG_AUGMENT}[level]
    return dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, **changes))


def nested_subset(labels: list[str], n: int, seed: int) -> list[int]:
    """Positions of the first ``n`` rows of each label in one seeded random order (so a smaller ``n``'s subset is
    inside a larger one's); a label with fewer rows gives all of them."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(labels))
    taken: dict[str, int] = {}
    out = []
    for i in order:
        if taken.get(labels[i], 0) < n:
            taken[labels[i]] = taken.get(labels[i], 0) + 1
            out.append(int(i))
    return sorted(out)


def epochs_for_steps(steps: int, n_train: int, batch_size: int) -> int:
    """Epochs that give at least ``steps`` optimizer steps on ``n_train`` clips, by the trainer's own rules
    (:func:`~nfaudio.training.trainer.loader_steps`, :func:`~nfaudio.training.trainer.epochs_for`)."""
    from nfaudio.training.trainer import epochs_for, loader_steps

    return epochs_for(1, steps, loader_steps(n_train, batch_size))


def logmel_features(cfg: Config, dataset: Any, batch_size: int = 64) -> Any:
    """``(clips, 2 * n_mels)`` float64: the recipe's log-mel spectrogram of each clip (the nets' input, the
    evaluation crop), its mean and standard deviation over time per mel band."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from nfaudio.frontend import LogMel
    from nfaudio.training.build import frontend_kwargs

    frontend = LogMel(**frontend_kwargs(cfg)).eval()
    out = []
    with torch.no_grad():
        for wave, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            spec = frontend(wave).squeeze(1)  # (B, mels, frames)
            out.append(torch.cat([spec.mean(-1), spec.std(-1)], 1).double().numpy())
    return np.concatenate(out)


def _baseline(cfg: Config, train_set: Any, val_set: Any) -> dict[str, float]:
    """The classical baseline's accuracy and the recipe's metric on ``val_set``: :func:`logmel_features`,
    standardised, multinomial logistic regression (L2, C=1) fitted on ``train_set``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from nfaudio.data import AudioDataset, encode_targets
    from nfaudio.metrics import accuracy, get_metric

    a = cfg.audio

    def features(ds: Any) -> Any:
        return logmel_features(cfg, AudioDataset(ds, sample_rate=a.sample_rate, duration=a.duration, train=False,
                                                 crop=a.eval_crop))

    y_train = encode_targets(train_set, secondary_weight=1.0).argmax(1)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    clf.fit(features(train_set), y_train)
    probs = np.zeros((len(val_set), len(val_set.classes)))
    probs[:, clf.classes_] = clf.predict_proba(features(val_set))  # classes absent from training stay at 0
    truth = encode_targets(val_set, secondary_weight=1.0)
    return {"accuracy": float(accuracy(truth.argmax(1), probs)),
            cfg.train.metric: float(get_metric(cfg.train.metric)(truth > 0, probs))}


def _score(cfg: Config, run_dir: Path, val_set: Any) -> dict[str, float]:
    """Accuracy and the recipe's metric of ``run_dir``'s model on ``val_set``."""
    import torch
    from torch.utils.data import DataLoader

    from nfaudio.data import AudioDataset, encode_targets
    from nfaudio.metrics import accuracy, get_metric
    from nfaudio.rundir import RunDir
    from nfaudio.training.losses import ClipFrameLoss
    from nfaudio.training.trainer import evaluate

    model, _ = RunDir(run_dir).load_model()
    a = cfg.audio
    ds = AudioDataset(val_set, sample_rate=a.sample_rate, duration=a.duration, train=False, crop=a.eval_crop)
    loader = DataLoader(ds, batch_size=cfg.train.eval_batch_size or cfg.train.batch_size, shuffle=False)
    loss_fn = ClipFrameLoss(cfg.loss.name, cfg.loss.frame_weight)
    with torch.no_grad():
        loss, probs, ids = evaluate(model, loader, loss_fn, torch.device("cpu"), cfg.activation)
    truth = encode_targets(val_set, secondary_weight=1.0)
    order = {r: i for i, r in enumerate(val_set.df["row_id"].astype(str))}
    truth = truth[[order[str(r)] for r in ids]]
    out = {"accuracy": float(accuracy(truth.argmax(1), probs)), "val_loss": float(loss)}
    out[cfg.train.metric] = float(get_metric(cfg.train.metric)(truth > 0, probs))
    return out


def run(cfg: Config, out: str | os.PathLike, sizes: list[int] | None = None, models: list[str] | None = None,
        lrs: list[float] | None = None, epochs: list[int] | None = None, augments: list[str] | None = None,
        folds: list[int] | None = None, batch_size: int = 16, seed: int | None = None,
        steps: list[int] | None = None, baseline: bool = True) -> Path:
    """Train every (clips per class, model, lr, budget, augmentation) setting on every fold; results and report.

    Args:
        cfg: the recipe (data, ``cv`` groups, audio, frontend, optimizer; ``model.pretrained`` is set to false).
        sizes: clips per class drawn from the training groups (default 5, 10, 30).
        steps: training budgets in optimizer steps (default 250 and 1000; epochs per set from
            :func:`epochs_for_steps`). Ignored when ``epochs`` is given.
        epochs: training budgets in epochs, the same for every set size, instead of ``steps``.
        folds: held-out folds (default the recipe's first two).
        batch_size: training batch size of every cell.
        baseline: also fit the classical baseline (:data:`BASELINE`) on every (size, fold).

    Returns:
        The report's path.
    """
    import numpy as np

    from nfaudio.data import load_data
    from nfaudio.folds import assign_folds
    from nfaudio.training.trainer import fit, loader_steps

    seed = cfg.train.seed if seed is None else seed
    sizes, models = list(sizes or DEFAULT_SIZES), list(models or DEFAULT_MODELS)
    lrs = list(lrs or DEFAULT_LRS)
    budget_key = "epochs" if epochs else "steps"
    budgets = list(epochs or steps or DEFAULT_STEPS)
    augments = list(augments or DEFAULT_AUGMENTS)
    for level in augments:
        augment_level(cfg, level)  # an unknown level fails before any training
    study = Study("small-data", out, seed=seed)
    manifest = load_data(cfg)
    c = cfg.cv
    fold_of_row = np.asarray(assign_folds(manifest, c.n_folds, c.strategy, c.group_column, cfg.train.seed))
    available = sorted(int(k) for k in np.unique(fold_of_row))
    folds = list(folds if folds is not None else (cfg.cv.folds or available[:2]))
    unknown = sorted(set(folds) - set(available))
    if unknown:
        raise ValueError(f"folds {unknown} do not exist; the recipe's folds are {available}")
    cells = [{"clips_per_class": n, "model": m, "lr": lr, budget_key: b, "augment": a, "fold": k,
              "batch_size": batch_size}
             for n in sizes for m in models for lr in lrs for b in budgets for a in augments for k in folds]
    if baseline:
        cells += [{"clips_per_class": n, "model": BASELINE, "fold": k} for n in sizes for k in folds]

    def sets(cell: dict[str, Any]) -> tuple[Any, Any]:
        k = cell["fold"]
        pool = manifest.subset(fold_of_row != k)
        train_set = pool.subset(np.isin(np.arange(len(pool)), nested_subset(
            pool.df["primary_label"].astype(str).tolist(), cell["clips_per_class"], seed + k)))
        return train_set, manifest.subset(fold_of_row == k)

    def measure(cell: dict[str, Any]) -> dict[str, Any]:
        train_set, val_set = sets(cell)
        common = {"n_train": len(train_set), "n_val": len(val_set), "metric": cfg.train.metric,
                  "chance": 1.0 / len(manifest.classes)}
        if cell["model"] == BASELINE:
            return {"status": "ok", **common, **_baseline(cfg, train_set, val_set)}
        n_epochs = cell.get("epochs") or epochs_for_steps(cell["steps"], len(train_set), cell["batch_size"])
        ccfg = augment_level(cfg, cell["augment"])
        ccfg = dataclasses.replace(
            ccfg, model=dataclasses.replace(ccfg.model, name=cell["model"], pretrained=False),
            optim=dataclasses.replace(ccfg.optim, lr=cell["lr"]),
            data=dataclasses.replace(ccfg.data, num_workers=0),  # a few dozen clips: no worker start-up
            train=dataclasses.replace(ccfg.train, epochs=n_epochs, batch_size=cell["batch_size"],
                                      early_stop_patience=None, select="last", progress=False,
                                      max_steps_per_epoch=None))
        run_dir = study.out / "cells" / "_current"
        shutil.rmtree(run_dir, ignore_errors=True)  # a cell killed half-way starts again
        try:
            result = fit(ccfg, train_set, None, run_dir, seed=seed + cell["fold"])
            scores = _score(ccfg, run_dir, val_set)
        except (RuntimeError, ValueError) as err:
            log.warning("cell %s failed: %s", cell, err)
            return {"status": "failed", "error": str(err)}
        shutil.rmtree(run_dir, ignore_errors=True)
        per_epoch = loader_steps(len(train_set), cell["batch_size"])
        return {"status": "ok", **common, **scores, "epochs_run": n_epochs, "steps_run": n_epochs * per_epoch,
                "final_train_loss": result.history[-1]["train_loss"] if result.history else None}

    rows = study.run(cells, measure)
    return _report(study, rows, cfg, budget_key)


def _setting(budget_key: str) -> tuple[str, ...]:
    return ("clips_per_class", "model", "lr", budget_key, "augment")


def summarise(rows: list[dict[str, Any]], budget_key: str = "steps") -> list[dict[str, Any]]:
    """One row per net setting: accuracy mean/min over its folds, ranked within each clips-per-class size (the
    baseline's rows are left out: :func:`summarise_baseline`)."""
    setting = _setting(budget_key)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "ok" and r["model"] != BASELINE:
            groups.setdefault(tuple(r.get(s) for s in setting), []).append(r)
    out = [{**dict(zip(setting, key)), "folds": len(g), "accuracy": statistics.fmean(r["accuracy"] for r in g),
            "accuracy_min": min(r["accuracy"] for r in g), "chance": g[0]["chance"]} for key, g in groups.items()]
    return sorted(out, key=lambda s: (s["clips_per_class"], -s["accuracy"]))


def summarise_baseline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The classical baseline per clips-per-class size: accuracy mean/min over the folds."""
    sizes: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "ok" and r["model"] == BASELINE:
            sizes.setdefault(r["clips_per_class"], []).append(r)
    return [{"clips_per_class": n, "model": BASELINE, "folds": len(g),
             "accuracy": statistics.fmean(r["accuracy"] for r in g), "accuracy_min": min(r["accuracy"] for r in g),
             "chance": g[0]["chance"]} for n, g in sorted(sizes.items())]


def _marginals(summary: list[dict[str, Any]], factor: str) -> str:
    """Mean accuracy of each level of ``factor`` (over every other setting), per clips-per-class size."""
    sizes = sorted({s["clips_per_class"] for s in summary})
    levels = list(dict.fromkeys(s[factor] for s in summary))
    table = []
    for level in levels:
        row: dict[str, Any] = {factor: level}
        for n in sizes:
            vals = [s["accuracy"] for s in summary if s[factor] == level and s["clips_per_class"] == n]
            row[f"{n}/class"] = statistics.fmean(vals) if vals else None
        table.append(row)
    return markdown_table(table, [factor] + [f"{n}/class" for n in sizes], digits=3)


def _report(study: Study, rows: list[dict[str, Any]], cfg: Config, budget_key: str = "steps") -> Path:
    from nfaudio.study.plots import line_plot

    setting = _setting(budget_key)
    summary, base = summarise(rows, budget_key), summarise_baseline(rows)
    best = []
    for n in sorted({s["clips_per_class"] for s in summary}):
        best.append(next(s for s in summary if s["clips_per_class"] == n))
    base_of = {b["clips_per_class"]: b for b in base}
    versus = [{"clips_per_class": s["clips_per_class"], "best_net": " / ".join(str(s[f]) for f in setting[1:]),
               "net_accuracy": s["accuracy"], "baseline_accuracy": base_of.get(s["clips_per_class"], {}).get(
                   "accuracy"), "chance": s["chance"]} for s in best]
    if summary:
        top = {tuple(s[f] for f in setting[1:]) for s in best}
        curves = [s for s in summary if tuple(s[f] for f in setting[1:]) in top]
        curves += [{**b, "lr": "", budget_key: "", "augment": ""} for b in base]
        line_plot(curves, "clips_per_class", "accuracy", list(setting[1:]), study.out / "accuracy_vs_clips.png",
                  title="held-out accuracy vs clips per class (best settings, classical baseline)")
    nets = [r for r in rows if r["model"] != BASELINE]
    t = nets[0] if nets else {"batch_size": "?"}
    budget = ("a budget of optimizer steps, turned into epochs for each set size (epochs_run, steps_run in "
              "results.json)" if budget_key == "steps" else "the same epochs for every set size")
    cols = list(setting) + ["folds", "accuracy", "accuracy_min", "chance"]
    sections = [
        ("Set-up", f"From scratch (model.pretrained false), {cfg.optim.name} with AGC {cfg.optim.agc} "
                   f"(clip {cfg.optim.agc_clip:g}), batch {t['batch_size']}, {budget}, warm-up "
                   f"{cfg.schedule.warmup_epochs:g} epoch then cosine; no early stopping, the last epoch's model "
                   f"scored on every clip of the held-out group (cv: {cfg.cv.strategy} on {cfg.cv.group_column}). "
                   "Training clips: n per class drawn from the other groups (nested subsets). Baseline "
                   f"({BASELINE}): the recipe's log-mel spectrogram, mean and std over time per mel band, "
                   "standardised, multinomial logistic regression, on the same clips and folds."),
        ("Best net per size vs the classical baseline", markdown_table(
            versus, ["clips_per_class", "best_net", "net_accuracy", "baseline_accuracy", "chance"], digits=3)),
        ("Best setting per size", markdown_table(best, cols, digits=3)),
        ("Mean accuracy by model", _marginals(summary, "model")),
        ("Mean accuracy by learning rate", _marginals(summary, "lr")),
        (f"Mean accuracy by {budget_key}", _marginals(summary, budget_key)),
        ("Mean accuracy by augmentation", _marginals(summary, "augment")),
        ("Every setting", markdown_table(summary + base, cols, digits=3)),
        ("Plot", "![accuracy vs clips per class](accuracy_vs_clips.png)"),
    ]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        sections.append(("Failed cells", markdown_table(failed, list(setting) + ["fold", "error"])))
    return study.write_report("small-data: training from scratch on a few clips per class", sections)
