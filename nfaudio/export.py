"""ONNX export: the whole model with its log-mel frontend inside (waveform in, clip and frame logits out, and
optionally the window embeddings, dynamic batch), the class names, sample rate, window length and activation
stored as ONNX ``metadata_props`` so the file is self-describing (:func:`read_onnx_metadata`). The frontend is
written with its "matmul" STFT strategy (:mod:`nfaudio.frontend.matmul`) where that reproduces the model's
frontend; the runtimes that score the file are in :mod:`nfaudio.backends`.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import nfaudio
from nfaudio.backends import check_activation, ort_session, require
from nfaudio.fileio import atomic_path
from nfaudio.frontend import LogMel
from nfaudio.models import AudioClassifier, load_checkpoint, prediction_meta

__all__ = ["OPSET", "export_onnx", "read_onnx_metadata"]

log = logging.getLogger(__name__)

OPSET = 17  # first opset with the STFT op the frontend exports to
_META_PREFIX = "nfaudio."


def _matmul_frontend(frontend: LogMel, example: torch.Tensor, atol: float = 1e-3) -> LogMel | None:
    """``frontend`` with the "matmul" STFT strategy when it reproduces ``frontend`` on ``example``, else None."""
    try:
        fast = frontend.with_stft("matmul")
        with torch.no_grad():
            diff = float((fast(example) - frontend(example)).abs().max())
    except (AttributeError, TypeError, ValueError, RuntimeError) as err:
        log.warning("exporting the standard STFT frontend (matmul frontend unavailable: %s)", err)
        return None
    if diff > atol:
        log.warning("exporting the standard STFT frontend (matmul frontend differs by %.3g)", diff)
        return None
    return fast


class _Logits(nn.Module):
    """``wave (B, T) -> (clip (B, C), frame (B, F, C)[, embedding (B, D)])`` as a plain tuple for the exporter."""

    def __init__(self, model: AudioClassifier, embedding: bool = False) -> None:
        super().__init__()
        self.model = model
        self.embedding = embedding

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.embedding:
            return tuple(self.model.forward_with_embedding(wave))
        out = self.model(wave)
        return out.clip, out.frame


def export_onnx(model: AudioClassifier | str | os.PathLike, out: str | os.PathLike, *,
                classes: Sequence[str] | None = None, duration: float | None = None, activation: str | None = None,
                opset: int = OPSET, check: bool = True, atol: float = 1e-4, fast_frontend: bool = True,
                embedding: bool = False) -> Path:
    """Export a model (frontend included) to ONNX: input ``wave (batch, T)`` float32, outputs ``clip
    (batch, C)`` and ``frame (batch, F, C)`` logits (and with ``embedding`` a third output ``embedding (batch,
    D)``, :meth:`AudioClassifier.forward_embedding`), batch dynamic, ``T`` the window length.

    Metadata (``metadata_props``, JSON values): ``nfaudio.classes``, ``nfaudio.sample_rate``,
    ``nfaudio.duration``, ``nfaudio.activation``, ``nfaudio.fmin``/``fmax``, ``nfaudio.frame_seconds``,
    ``nfaudio.model_config``, ``nfaudio.version``, ``nfaudio.embedding_dim`` (0 without the output).

    The model given is left as it was (mode, device, weights): a copy in eval mode on the CPU is exported and
    checked.

    Args:
        model: a model, or a checkpoint file (its classes, duration and activation are used).
        out: the ``.onnx`` file to write (atomically).
        classes: class names (default: from the checkpoint, else ``class_<i>``).
        duration: window length in seconds (default: from the checkpoint, else 5).
        activation: "sigmoid" or "softmax" (default: from the checkpoint, else "sigmoid").
        opset: ONNX opset (>= 17 for the STFT op).
        check: run the file with onnxruntime (when installed) and compare with torch.
        atol: largest allowed absolute difference of the logits (and embeddings) for ``check``.
        fast_frontend: export the STFT as two small DFT matrix products (several times faster in
            onnxruntime and OpenVINO than the ONNX ``STFT`` op; used only where it matches the frontend).
        embedding: add the ``embedding`` output (what ``nfaudio embed`` reads).

    Returns:
        The path written.

    Raises:
        ImportError: ``onnx`` is not installed.
        RuntimeError: ``check`` found a difference above ``atol``.
    """
    onnx = require("onnx", "onnx")
    if isinstance(model, (str, os.PathLike)):
        model, meta = load_checkpoint(model)
        classes = meta["classes"] if classes is None else classes
        duration = meta["duration"] if duration is None else duration
        activation = activation or meta["activation"]
    else:
        model = copy.deepcopy(model)  # the caller's model keeps its mode, device and state
    model = model.eval().cpu()
    meta = prediction_meta(model, classes, duration, activation)
    check_activation(meta["activation"])
    n = int(round(meta["duration"] * meta["sample_rate"]))
    example = torch.randn(2, n, generator=torch.Generator().manual_seed(0)) * 0.1
    buf = io.BytesIO()
    names = ["clip", "frame"] + (["embedding"] if embedding else [])
    axes = {"wave": {0: "batch"}, **{name: {0: "batch"} for name in names}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer / exporter-deprecation chatter
        reference = model.frontend
        fast = _matmul_frontend(reference, example) if fast_frontend else None
        if fast is not None:
            model.frontend = fast  # our copy: the graph gets the matmul STFT
        # The wrapper must be in eval mode too: the exporter restores the wrapper's mode after tracing,
        # which would switch the wrapped model (SpecAugment, dropout, drop-path) back to training.
        torch.onnx.export(_Logits(model, embedding).eval(), (example,), buf, dynamo=False, opset_version=opset,
                          input_names=["wave"], output_names=names, dynamic_axes=axes)
    proto = onnx.load_from_string(buf.getvalue())
    meta.update(frame_seconds=float(model.frame_seconds), model_config=model.config.to_dict(),
                frontend_graph="stft" if fast is None else "matmul_dft", version=nfaudio.__version__,
                embedding_dim=model.embedding_dim if embedding else 0)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = _META_PREFIX + key, json.dumps(value)
    proto.doc_string = ("nfaudio model: wave (batch, samples) -> clip (batch, C), frame (batch, F, C) logits"
                        + (", embedding (batch, D)" if embedding else ""))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    if check:
        model.frontend = reference  # parity against the model's own (fft) frontend
        _check_parity(model, out, atol)
    return out


def _check_parity(model: AudioClassifier, path: Path, atol: float) -> float:
    """Max |torch - onnxruntime| over the outputs (clip and frame logits, embeddings) on a random batch of 3;
    raise above ``atol``."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.info("onnxruntime not installed: %s not checked against torch", path)
        return float("nan")
    meta = read_onnx_metadata(path)
    wave = torch.randn(3, int(round(meta["duration"] * meta["sample_rate"])),
                       generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.inference_mode():
        ref = model.forward_with_embedding(wave)
    session = ort_session(str(path), "cpu", None)
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, {"wave": wave.numpy()})
    diff = max(float(np.abs(g - getattr(ref, name).numpy()).max()) for name, g in zip(names, got))
    if diff > atol:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {diff:.3g} > {atol:g}")
    log.info("exported %s (max |onnx - torch| = %.2g)", path, diff)
    return diff


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``nfaudio.*`` metadata of an exported file (keys without the prefix, JSON-decoded).

    Raises:
        ValueError: the file was not written by :func:`export_onnx`.
    """
    onnx = require("onnx", "onnx")
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key[len(_META_PREFIX):]: json.loads(p.value) for p in proto.metadata_props
            if p.key.startswith(_META_PREFIX)}
    missing = {"classes", "sample_rate", "duration"} - set(meta)
    if missing:
        raise ValueError(f"{path}: not an nfaudio ONNX export (no {sorted(missing)} metadata)")
    return meta
