"""A logistic-regression probe as a model's head: ``nfaudio probe attach PROBE MODEL --out NEW.pt``.

The probe computes ``act(W (e - mean) / scale + b)`` on the model's window embedding ``e``
(:meth:`AudioClassifier.forward_embedding`), one linear layer after a fixed standardisation; folding the
standardisation in (``W' = W / scale``, ``b' = b - W' mean``) makes it one linear layer on ``e``, which becomes the
head's class projection:

- pooled head: ``fc`` := ``(W', b')``; ``fc(embedding)`` is the clip logit, so the clip scores are the probe's;
- SED head: ``cla`` := ``(W', b')`` and ``att`` := 0. With zero attention logits the attention is uniform over
  time, so the clip logit is the time mean of ``cla(h_t)``, which is ``cla`` of the time mean of ``h``: the
  embedding (``cla`` is linear). The frame scores are the probe applied to each frame's hidden activations.

The new checkpoint keeps the backbone and the rest of the head, has the probe's classes and activation (softmax for
a multi-class probe, sigmoid for a multi-label one) and records the probe (``extra["probe"]``), so
``nfaudio predict``, ``nfaudio embed --scores`` and ``nfaudio export`` carry it like any model. Its embeddings are
the base model's (the layers that make them are unchanged).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nfaudio.embed.probe import Probe, load_probe
from nfaudio.models import load_checkpoint, save_model
from nfaudio.models.heads import PooledHead, SEDHead

__all__ = ["attach_probe", "linear_weights"]

log = logging.getLogger(__name__)


def linear_weights(probe: Probe) -> tuple[np.ndarray, np.ndarray]:
    """The probe as one linear map of the raw embedding: ``(W' (C, D), b' (C,))`` float64, logits
    ``W' e + b'`` equal to :meth:`Probe.logits` ``(e)``.

    Raises:
        ValueError: a probe with hidden layers (an MLP).
    """
    if len(probe.layers) != 1:
        raise ValueError(f"only a logistic-regression probe is one linear layer; {probe.path} is a "
                         f"{probe.kind} probe with {len(probe.layers) - 1} hidden layer(s)")
    w, b = probe.layers[0]
    w2 = w / probe.scale[None, :]
    return w2, b - w2 @ probe.mean


def attach_probe(probe: Probe | str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``out``: the checkpoint ``model`` with the probe as its head (module docstring).

    Args:
        probe: a probe or its folder (:func:`~nfaudio.embed.probe.load_probe`); logistic regression only.
        model: the ``.pt`` checkpoint whose embeddings the probe was trained on (one model: a store made by a CV
            ensemble holds combined embeddings that no single model computes).
        out: the new checkpoint (written atomically).

    Raises:
        ValueError: an MLP probe, a probe trained on an ensemble's embeddings, or a model whose embedding width
            differs from the probe's (both named).
    """
    probe = probe if isinstance(probe, Probe) else load_probe(probe)
    w, b = linear_weights(probe)
    model = Path(model)
    net, extra = load_checkpoint(model)
    info = probe.source.get("info", {})
    made_by = info.get("models") or []
    if len(made_by) > 1:
        raise ValueError(f"{probe.path} was trained on the embeddings of a {len(made_by)}-model ensemble "
                         f"({info.get('fold_mode')} of the folds); attach a probe trained on one model's store")
    if net.embedding_dim != probe.dim:
        raise ValueError(f"{model} makes {net.embedding_dim}-wide embeddings, but the probe {probe.path} takes "
                         f"{probe.dim}-wide ones")
    if made_by and Path(made_by[0].get("path", "")).resolve() != model.resolve():
        log.warning("%s was trained on embeddings of %s, not of %s", probe.path, made_by[0].get("path"), model)
    n = len(probe.classes)
    net.config = dataclasses.replace(net.config, num_classes=n)  # what rebuilds the model from the checkpoint
    weight = torch.as_tensor(w, dtype=torch.float32)
    bias = torch.as_tensor(b, dtype=torch.float32)
    head = net.head  # only the class projections change: the layers that make the embedding stay as they are
    if isinstance(head, SEDHead):
        head.cla = nn.Conv1d(head.embedding_dim, n, kernel_size=1)
        head.att = nn.Conv1d(head.embedding_dim, n, kernel_size=1)
        with torch.no_grad():
            head.cla.weight.copy_(weight[:, :, None])  # Conv1d weight (C, W, 1)
            head.cla.bias.copy_(bias)
            head.att.weight.zero_()  # uniform attention: the clip logit is cla(embedding)
            head.att.bias.zero_()
    elif isinstance(head, PooledHead):
        head.fc = nn.Linear(head.embedding_dim, n)
        with torch.no_grad():
            head.fc.weight.copy_(weight)
            head.fc.bias.copy_(bias)
    else:  # a head type added later must say how its class projection reads the embedding
        raise TypeError(f"cannot attach a probe to a {type(head).__name__}")
    keep = {k: v for k, v in extra.items() if k in ("duration",)}
    record = {"path": str(probe.path), "kind": probe.kind, "task": probe.task, "base_model": str(model),
              "trained_on": str(probe.source.get("root", ""))}
    return save_model(net.eval(), out, **keep, classes=list(probe.classes), activation=probe.activation,
                      probe=record)
