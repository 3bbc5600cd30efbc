"""ONNX export: the whole model with its log-mel frontend inside (waveform in, clip and frame logits out,
dynamic batch), the class names, sample rate, window length and activation stored as ONNX ``metadata_props`` so
the file is self-describing (:func:`read_onnx_metadata`). The frontend is written with its "matmul" STFT strategy
(:mod:`nfaudio.frontend.matmul`) where that reproduces the model's frontend; the runtimes that score the file
are in :mod:`nfaudio.backends`.

:func:`export_parts` writes a model as two graphs instead, its frontend (``wave -> spec``) and its body (``spec ->
clip, frame``), so that the members of an ensemble with the same frontend run it once per batch; the export cache
(:mod:`nfaudio.export_cache`) keeps these pairs next to the checkpoints for the onnxruntime and OpenVINO backends.

With ``embedding=True`` (and always in :func:`export_parts`' body) the graph has a third output, the window
embeddings ``(batch, D)`` of :meth:`AudioClassifier.forward_embedding`.

Both exports first fold the weight standardization of the NFNet convolutions (timm's ``ScaledStdConv2d`` and kin
standardize their weights on every forward pass) into plain convolutions with constant weights
(:func:`freeze_weight_standardization`): the same outputs, but a graph whose convolution weights are constants, as
runtimes and post-training quantizers (:mod:`nfaudio.quantize`) expect.
"""

from __future__ import annotations

import copy
import hashlib
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
import torch.nn.functional as F
from torch import nn

import nfaudio
from nfaudio.backends import check_activation, ort_session, require
from nfaudio.fileio import atomic_path
from nfaudio.frontend import LogMel
from nfaudio.models import AudioClassifier, load_checkpoint, prediction_meta

__all__ = ["OPSET", "export_onnx", "export_parts", "freeze_weight_standardization", "read_onnx_metadata"]

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


class _PadSameConv(nn.Conv2d):
    """A convolution with TensorFlow-style dynamic "same" padding (timm's ``pad_same``) and a constant weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.layers.padding import pad_same

        return super().forward(pad_same(x, self.kernel_size, self.stride, self.dilation))


def freeze_weight_standardization(model: nn.Module) -> int:
    """Replace, in place, every weight-standardized convolution of ``model`` (timm's ``StdConv2d``,
    ``StdConv2dSame``, ``ScaledStdConv2d``, ``ScaledStdConv2dSame``) by a plain ``nn.Conv2d`` holding the
    standardized weight it computes (the same ``F.batch_norm`` over each filter, gain and scale included), for
    inference and export. Returns how many were replaced; a model without them is left as it is."""
    from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

    kinds = (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]
    for name, conv in targets:
        gain = getattr(conv, "gain", None)
        with torch.no_grad():
            weight = F.batch_norm(conv.weight.reshape(1, conv.out_channels, -1), None, None,
                                  weight=None if gain is None else (gain * conv.scale).view(-1), training=True,
                                  momentum=0.0, eps=conv.eps).reshape_as(conv.weight)
        cls = _PadSameConv if getattr(conv, "same_pad", False) else nn.Conv2d
        plain = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if conv.bias is not None:
                plain.bias.copy_(conv.bias)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, plain)
    return len(targets)


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


class _Frontend(nn.Module):
    """``wave (B, T) -> spec (B, 1, n_mels, frames)``: the model's log-mel frontend alone."""

    def __init__(self, model: AudioClassifier) -> None:
        super().__init__()
        self.frontend = model.frontend

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.frontend(wave)


class _Body(nn.Module):
    """``spec -> (clip (B, C), frame (B, F, C))`` logits: everything after the frontend."""

    def __init__(self, model: AudioClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model.forward_spectrogram_with_embedding(spec)
        return out.clip, out.frame, out.embedding


def _to_onnx(module: nn.Module, example: torch.Tensor, names: tuple[str, list[str]], opset: int) -> bytes:
    """Trace ``module`` (in eval mode, batch axis dynamic) into ONNX bytes."""
    buf = io.BytesIO()
    inp, outs = names
    axes = {n: {0: "batch"} for n in (inp, *outs)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer / exporter-deprecation chatter
        torch.onnx.export(module.eval(), (example,), buf, dynamo=False, opset_version=opset, input_names=[inp],
                          output_names=outs, dynamic_axes=axes)
    return buf.getvalue()


def export_parts(model: AudioClassifier | str | os.PathLike, folder: str | os.PathLike, *, opset: int = OPSET,
                 fast_frontend: bool = True) -> dict[str, Any]:
    """Export a model as ``folder/frontend.onnx`` (``wave (batch, T) -> spec (batch, 1, n_mels, frames)``) and
    ``folder/body.onnx`` (``spec -> clip (batch, C), frame (batch, F, C)`` logits, ``embedding (batch, D)``),
    each written atomically and carrying the metadata of :func:`export_onnx`. Running the frontend then the body
    equals the whole model.

    Args:
        model: a model, or a checkpoint file (its classes, duration and activation are used).
        folder: where the two files go (created).
        opset: ONNX opset (>= 17).
        fast_frontend: the matmul DFT frontend where it matches (see :func:`export_onnx`).

    Returns:
        The metadata (as :func:`read_onnx_metadata` gives it), plus ``frontend`` (the frontend's settings).

    Raises:
        ImportError: ``onnx`` is not installed.
    """
    onnx = require("onnx", "onnx")
    if isinstance(model, (str, os.PathLike)):
        model, ckpt = load_checkpoint(model)
        meta = prediction_meta(model, ckpt["classes"], ckpt["duration"], ckpt["activation"])
    else:
        model = copy.deepcopy(model)
        meta = prediction_meta(model)
    model = model.eval().cpu()
    freeze_weight_standardization(model)  # our copy
    check_activation(meta["activation"])
    n = int(round(meta["duration"] * meta["sample_rate"]))
    example = torch.randn(2, n, generator=torch.Generator().manual_seed(0)) * 0.1
    fast = _matmul_frontend(model.frontend, example) if fast_frontend else None
    with torch.no_grad():
        spec = model.frontend(example)
    meta.update(frame_seconds=float(model.frame_seconds), model_config=model.config.to_dict(),
                frontend_graph="stft" if fast is None else "matmul_dft", version=nfaudio.__version__,
                frontend=model.frontend.settings(), frontend_sha256=_frontend_digest(model.frontend),
                embedding_dim=model.embedding_dim)
    if fast is not None:
        model.frontend = fast  # our copy: the graph gets the matmul STFT
    graphs = {"frontend.onnx": _to_onnx(_Frontend(model), example, ("wave", ["spec"]), opset),
              "body.onnx": _to_onnx(_Body(model), spec, ("spec", ["clip", "frame", "embedding"]), opset)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in graphs.items():
        proto = onnx.load_from_string(data)
        _add_metadata(proto, {**meta, "part": name.removesuffix(".onnx")})
        with atomic_path(folder / name) as tmp:
            onnx.save(proto, str(tmp))
    return meta


def _frontend_digest(frontend: LogMel) -> str:
    """SHA-256 of a frontend's settings and buffers: equal digests compute equal spectrograms."""
    h = hashlib.sha256(json.dumps(frontend.settings(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(frontend.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _add_metadata(proto: Any, meta: dict[str, Any]) -> None:
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = _META_PREFIX + key, json.dumps(value)


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
        graph = copy.deepcopy(model)  # constant conv weights, the matmul STFT; ``model`` stays the reference
        freeze_weight_standardization(graph)
        fast = _matmul_frontend(model.frontend, example) if fast_frontend else None
        if fast is not None:
            graph.frontend = fast
        # The wrapper must be in eval mode too: the exporter restores the wrapper's mode after tracing,
        # which would switch the wrapped model (SpecAugment, dropout, drop-path) back to training.
        torch.onnx.export(_Logits(graph, embedding).eval(), (example,), buf, dynamo=False, opset_version=opset,
                          input_names=["wave"], output_names=names, dynamic_axes=axes)
    proto = onnx.load_from_string(buf.getvalue())
    meta.update(frame_seconds=float(model.frame_seconds), model_config=model.config.to_dict(),
                frontend_graph="stft" if fast is None else "matmul_dft", version=nfaudio.__version__,
                embedding_dim=model.embedding_dim if embedding else 0)
    _add_metadata(proto, meta)
    proto.doc_string = ("nfaudio model: wave (batch, samples) -> clip (batch, C), frame (batch, F, C) logits"
                        + (", embedding (batch, D)" if embedding else ""))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    if check:
        _check_parity(model, out, atol)  # against the model as it was (fft frontend, standardized convs)
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
