"""Shallow classifiers ("probes") on frozen embeddings: scikit-learn logistic regression or a small MLP trained on
the labelled windows of an embedding store (:mod:`nfaudio.embed.labels`), cross-validated, then scoring any store
of the same model without touching audio (the linear-probe protocol of representation learning; agile modelling
as in perch-hoplite and BirdNET's custom classifiers).

Model: the embeddings are standardised (``StandardScaler``), then

- ``logreg``, multi-class (every labelled window has one class): multinomial ``LogisticRegression``, softmax
  probabilities; multi-label: one binary ``LogisticRegression`` per class (``OneVsRestClassifier``), sigmoids;
- ``mlp``: ``MLPClassifier`` (ReLU hidden layers; softmax or, multi-label, sigmoid outputs).

Cross-validation: K folds grouped by file (``StratifiedGroupKFold`` through :func:`nfaudio.folds.assign_folds`; no
recording has windows on both sides), out-of-fold probabilities keyed by ``(file, start_s, end_s)``, and a
``metrics.json`` of the same shape as ``nfaudio cv``'s (metric per fold, mean, std, pooled out-of-fold; accuracy
too for a multi-class probe). The saved probe is fit on every labelled window.

On disk (``nfaudio probe train --out DIR``): ``DIR/probe.json`` (kind, task, classes, width, the store's model
info, settings) and ``DIR/probe.npz`` (the scaler and the layers' weights as arrays, no pickle), ``metrics.json``
and ``oof.csv``. A loaded probe computes exactly what the saved one did (the same numpy code either way).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfaudio.embed.labels import WindowLabels
from nfaudio.fileio import atomic_open, write_json

__all__ = ["KINDS", "TASKS", "Probe", "fit_estimator", "fit_probe", "load_probe", "probe_settings", "resolve_task",
           "targets"]

log = logging.getLogger(__name__)

KINDS = ("logreg", "mlp")
TASKS = ("auto", "multiclass", "multilabel")
FORMAT = "nfaudio-probe"
VERSION = 1
META, WEIGHTS = "probe.json", "probe.npz"
_CONST_LOGIT = 30.0  # a class that was constant in training: sigmoid(+-30) is 1 or 0 to 1e-13


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Probe:
    """A fitted probe: ``standardise -> [Linear -> ReLU]* -> Linear -> softmax | sigmoid``.

    Attributes:
        kind: "logreg" or "mlp". task: "multiclass" (softmax over ``classes``) or "multilabel" (a sigmoid each).
        classes: output order. dim: embedding width. mean, scale: the standardisation (``(x - mean) / scale``).
        layers: ``[(W (out, in), b (out,)), ...]`` float64; the last one gives the logits.
        source: the training store's ``root`` and ``info`` (which model made the embeddings).
        settings: the fitting settings (C, hidden, seed, ...). path: where it was saved or loaded from.
    """

    kind: str
    task: str
    classes: list[str]
    dim: int
    mean: np.ndarray
    scale: np.ndarray
    layers: list[tuple[np.ndarray, np.ndarray]]
    source: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def activation(self) -> str:
        """The output activation as ``nfaudio predict`` names it: "softmax" (multi-class) or "sigmoid"."""
        return "softmax" if self.task == "multiclass" else "sigmoid"

    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what}: embeddings of shape {x.shape}, but the probe {self.path or ''} takes "
                             f"{self.dim}-wide embeddings")
        return x

    def logits(self, x: np.ndarray, what: str = "input") -> np.ndarray:
        """``(N, D)`` embeddings -> ``(N, C)`` float64 logits."""
        h = (self._check(x, what) - self.mean) / self.scale
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h

    def predict_proba(self, x: np.ndarray, what: str = "input") -> np.ndarray:
        """``(N, D)`` embeddings -> ``(N, C)`` float64 probabilities (softmax or sigmoid of :meth:`logits`).

        Raises:
            ValueError: embeddings of another width (the message names ``what`` and the probe).
        """
        z = self.logits(x, what)
        return _softmax(z) if self.task == "multiclass" else 1.0 / (1.0 + np.exp(-z))

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/probe.npz`` then ``out_dir/probe.json`` (each atomically); returns the json's path."""
        out = Path(out_dir)
        arrays = {"mean": self.mean, "scale": self.scale}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        with atomic_open(out / WEIGHTS, "wb") as fh:
            np.savez(fh, **arrays)
        meta = {"format": FORMAT, "version": VERSION, "kind": self.kind, "task": self.task, "classes": self.classes,
                "dim": self.dim, "layers": len(self.layers), "activation": self.activation, "source": self.source,
                "settings": self.settings}
        write_json(out / META, meta)
        self.path = out
        return out / META


def load_probe(path: str | os.PathLike) -> Probe:
    """Load a probe saved by :meth:`Probe.save` (``path``: its folder or its ``probe.json``).

    Raises:
        FileNotFoundError: no probe there. ValueError: not a probe, or another format version.
    """
    path = Path(path)
    root = path if path.is_dir() else path.parent
    meta_path = root / META
    if not meta_path.is_file() or not (root / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: no probe ({META} and {WEIGHTS}; made by nfaudio probe train)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path}: unreadable ({err})") from err
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{meta_path}: not an nfaudio probe of version {VERSION}")
    with np.load(root / WEIGHTS) as z:
        layers = [(z[f"w{i}"], z[f"b{i}"]) for i in range(int(meta["layers"]))]
        mean, scale = z["mean"], z["scale"]
    return Probe(meta["kind"], meta["task"], list(meta["classes"]), int(meta["dim"]), mean, scale, layers,
                 meta.get("source", {}), meta.get("settings", {}), root)


def _estimator(kind: str, task: str, settings: dict[str, Any]) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logreg":
        lr = LogisticRegression(C=settings["C"], max_iter=settings["max_iter"], random_state=settings["seed"])
        clf = OneVsRestClassifier(lr) if task == "multilabel" else lr
    else:
        clf = MLPClassifier(hidden_layer_sizes=tuple(settings["hidden"]), alpha=settings["alpha"],
                            max_iter=settings["max_iter"], random_state=settings["seed"])
    return make_pipeline(StandardScaler(), clf)


def targets(labels: WindowLabels, classes: Sequence[str], task: str) -> np.ndarray:
    """Multi-class: ``(N,)`` class indices; multi-label: ``(N, C)`` 0/1."""
    index = {c: i for i, c in enumerate(classes)}
    if task == "multiclass":
        return np.array([index[next(iter(s))] for s in labels.labels], dtype=np.int64)
    y = np.zeros((len(labels.labels), len(classes)), dtype=np.int64)
    for r, s in enumerate(labels.labels):
        y[r, [index[c] for c in s]] = 1
    return y


def fit_estimator(kind: str, task: str, x: np.ndarray, y: np.ndarray, settings: dict[str, Any]) -> Any:
    """The fitted sklearn pipeline (``StandardScaler`` + the classifier) of a probe; ``y`` from :func:`targets`."""
    from sklearn.exceptions import ConvergenceWarning

    est = _estimator(kind, task, settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(x, y)
    for w in caught:  # one line each, through logging; a class present in every window is normal in OvR
        if issubclass(w.category, ConvergenceWarning):
            log.warning("the %s probe did not converge in %d iterations (raise max_iter / --max-iter)", kind,
                        settings["max_iter"])
            break
    return est


def _layers(est: Any, kind: str, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fitted estimator's layers as ``(W (out, in), b)``; a binary output becomes two softmax logits
    ``[0, z]`` (``softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]``, what sklearn's binary classifiers give)."""
    clf = est[-1]
    if kind == "logreg" and task == "multilabel":
        ws, bs = [], []
        for sub in clf.estimators_:
            if hasattr(sub, "coef_"):
                ws.append(sub.coef_[0])
                bs.append(sub.intercept_[0])
            else:  # sklearn's constant predictor: the class was always (or never) present in training
                ws.append(np.zeros(clf.n_features_in_))
                bs.append(_CONST_LOGIT if float(np.ravel(sub.y_)[0]) > 0.5 else -_CONST_LOGIT)
        return [(np.asarray(ws, np.float64), np.asarray(bs, np.float64))]
    if kind == "logreg":
        layers = [(clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64))]
    else:
        layers = [(w.T.astype(np.float64), b.astype(np.float64)) for w, b in zip(clf.coefs_, clf.intercepts_)]
    w, b = layers[-1]
    if task == "multiclass" and w.shape[0] == 1:
        layers[-1] = (np.vstack([np.zeros_like(w), w]), np.concatenate([np.zeros_like(b), b]))
    return layers


def probe_settings(kind: str, C: float, hidden: Sequence[int], alpha: float, max_iter: int | None, seed: int) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; choose one of {list(KINDS)}")
    return {"C": float(C), "hidden": [int(h) for h in hidden], "alpha": float(alpha),
            "max_iter": int(max_iter or (1000 if kind == "logreg" else 500)), "seed": int(seed)}


def resolve_task(labels: WindowLabels, task: str, source: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    if task == "auto":
        return "multiclass" if labels.single_label else "multilabel"
    if task == "multiclass" and not labels.single_label:
        bad = next(i for i, s in enumerate(labels.labels) if len(s) != 1)
        raise ValueError(f"{source}: a multi-class probe needs exactly one label per window; "
                         f"{labels.keys['file'].iloc[bad]} at {labels.keys['start_s'].iloc[bad]:g} s has "
                         f"{sorted(labels.labels[bad]) or 'none (nocall)'}")
    return task


def fit_probe(x: np.ndarray, labels: WindowLabels, kind: str = "logreg", task: str = "auto", *, C: float = 1.0,
              hidden: Sequence[int] = (256,), alpha: float = 1e-4, max_iter: int | None = None, seed: int = 0,
              source: dict[str, Any] | None = None, what: str = "labels") -> Probe:
    """Fit a probe on the labelled windows' embeddings ``x`` (``(N, D)``, aligned with ``labels.rows``).

    Raises:
        ValueError: an unknown kind or task, fewer than two classes for a multi-class probe, none for multi-label.
    """
    settings = probe_settings(kind, C, hidden, alpha, max_iter, seed)
    task = resolve_task(labels, task, what)
    classes = labels.classes
    if (task == "multiclass" and len(classes) < 2) or not classes:
        raise ValueError(f"{what}: a {task} probe needs at least {2 if task == 'multiclass' else 1} classes, "
                         f"got {classes}")
    est = fit_estimator(kind, task, np.asarray(x, np.float64), targets(labels, classes, task), settings)
    scaler = est[0]
    return Probe(kind, task, classes, int(np.shape(x)[1]), scaler.mean_.astype(np.float64),
                 scaler.scale_.astype(np.float64), _layers(est, kind, task), dict(source or {}),
                 {**settings, "n_windows": int(len(labels.rows))})
