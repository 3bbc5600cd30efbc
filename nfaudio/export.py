"""Prediction backends and ONNX export.

A backend (a :class:`Scorer`) turns a batch of waveforms into ensemble-mean class probabilities. Three exist:
``torch`` (:class:`TorchScorer`, the reference), ``onnxruntime`` (:class:`OnnxScorer`) and ``openvino``
(:class:`OpenVinoScorer`, optional extra). The last two run the graph written by :func:`export_onnx`: the
whole model with its log-mel frontend inside (waveform in, clip and frame logits out, dynamic batch), with
the class names, sample rate, window length and activation stored as ONNX ``metadata_props`` so the file is
self-describing (:func:`read_onnx_metadata`).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import nfaudio
from nfaudio.fileio import atomic_path
from nfaudio.models import AudioClassifier
from nfaudio.models import load_checkpoint as read_checkpoint
from nfaudio.runtime import eval_mode, module_device, resolve_device, same_device

__all__ = ["OPSET", "OnnxScorer", "OpenVinoScorer", "Scorer", "TorchScorer", "activate", "export_onnx",
           "load_checkpoint", "load_runtime_scorer", "read_onnx_metadata"]

log = logging.getLogger(__name__)

OPSET = 17  # first opset with the STFT op the frontend exports to
ACTIVATIONS = ("sigmoid", "softmax")
PRECISIONS = ("fp32", "bf16")
_META_PREFIX = "nfaudio."


class Scorer(Protocol):
    """Waveforms ``(B, T)`` float32 at ``sample_rate`` -> class probabilities ``(B, C)`` (ensemble mean)."""

    sample_rate: int
    name: str

    def __call__(self, waves: np.ndarray) -> np.ndarray: ...


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Sigmoid, or softmax over the last axis, of logits (float32, numpy)."""
    logits = np.asarray(logits, dtype=np.float32)
    if activation == "softmax":
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-logits))


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


# ----------------------------------------------------------------------------- torch
def load_checkpoint(path: str | os.PathLike) -> tuple[AudioClassifier, dict[str, Any]]:
    """Load an nfaudio checkpoint once: the model (eval mode, CPU) and its prediction metadata ``classes``,
    ``duration`` (window seconds), ``activation``, ``sample_rate``, ``fmin``, ``fmax``.

    Raises:
        ValueError: not an nfaudio checkpoint.
    """
    model, ckpt = read_checkpoint(path)
    classes = [str(c) for c in ckpt.get("classes") or []]
    if not classes:
        classes = [f"class_{i}" for i in range(model.num_classes)]
        log.warning("%s stores no class names; calling them class_0..class_%d", path, model.num_classes - 1)
    return model.eval(), _model_meta(model, classes, ckpt.get("duration") or 5.0, ckpt.get("activation"))


def _model_meta(model: AudioClassifier, classes: Sequence[str], duration: float, activation: str | None
                ) -> dict[str, Any]:
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    fe = model.frontend
    return {"classes": list(classes), "duration": float(duration), "activation": activation or "sigmoid",
            "sample_rate": int(fe.sample_rate), "fmin": float(fe.fmin), "fmax": float(fe.fmax)}


class TorchScorer:
    """Mean probability of PyTorch models (clip logits -> sigmoid/softmax) under ``torch.inference_mode``.

    The models are scored in eval mode and left as they were given (mode, device, weights): a model on another
    device than ``device`` is scored through a copy on ``device``.

    Args:
        models: :class:`~nfaudio.models.AudioClassifier` instances sharing classes and sample rate.
        activation: "sigmoid" (multi-label) or "softmax" (single-label).
        device: "auto" (CUDA when available), "cpu", "cuda", ...

    Raises:
        ValueError: no model, mixed sample rates, unknown activation.
    """

    name = "torch"

    def __init__(self, models: Sequence[nn.Module], activation: str = "sigmoid", device: str = "auto") -> None:
        _check_activation(activation)
        if not models:
            raise ValueError("a scorer needs at least one model")
        rates = {int(m.frontend.sample_rate) for m in models}
        if len(rates) != 1:
            raise ValueError(f"ensembled models must share one sample rate, got {sorted(rates)}")
        self.sample_rate = rates.pop()
        self.activation = activation
        self.device = resolve_device(device)
        self.models = [m if same_device(module_device(m), self.device) else copy.deepcopy(m).to(self.device)
                       for m in models]

    @torch.inference_mode()
    def __call__(self, waves: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
        total = None
        with eval_mode(*self.models):
            for m in self.models:
                logits = m(x).clip.float()
                p = torch.softmax(logits, -1) if self.activation == "softmax" else torch.sigmoid(logits)
                total = p if total is None else total + p
        return (total / len(self.models)).cpu().numpy()


# ----------------------------------------------------------------------------- export
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


class _MatmulLogMel(nn.Module):
    """The model's :class:`~nfaudio.frontend.LogMel` for a fixed input length, with the STFT computed as two
    small DFT matrix products (one Cooley-Tukey step, ``n_fft = N1 * N2``) instead of the ONNX ``STFT`` op,
    which onnxruntime and OpenVINO run several times slower on CPU. Built from the frontend's public settings
    and buffers; :func:`export_onnx` checks it against the frontend before using it.

    Shape: ``(B, num_samples) -> (B, 1, n_mels, frames)``.
    """

    def __init__(self, fe: nn.Module, num_samples: int) -> None:
        super().__init__()
        n, hop = int(fe.n_fft), int(fe.hop_length)
        n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        n2, half = n // n1, n // n1 // 2 + 1
        self.n, self.n1, self.n2, self.hop = n, n1, n2, hop
        self.center, self.pad_mode, self.power = bool(fe.center), _PAD_MODES[fe.pad_mode], float(fe.power)
        self.amin, self.ref, self.top_db = float(fe.amin), float(fe.ref), fe.top_db
        self.normalize, self.mean, self.std, self.eps = fe.normalize, float(fe.mean), float(fe.std), float(fe.eps)
        self.frames = 1 + (num_samples + (2 * (n // 2) if self.center else 0) - n) // hop
        index = None if n % hop == 0 else (torch.arange(self.frames)[:, None] * hop + torch.arange(n)).int()
        self.register_buffer("index", index)  # None: frames are cut by reshaping the signal into hop blocks
        self.register_buffer("window", fe.window.detach().float().reshape(n1, n2).clone())
        k1 = torch.arange(n1, dtype=torch.float64)
        a = 2 * math.pi * torch.outer(k1, k1) / n1
        self.register_buffer("dft1", torch.cat([torch.cos(a), -torch.sin(a)]).t().float().contiguous())  # (n1, 2n1)
        t = 2 * math.pi * torch.outer(torch.arange(n2, dtype=torch.float64), k1) / n  # twiddles (n2, n1)
        self.register_buffer("tw_cos", torch.cos(t).float())
        self.register_buffer("tw_sin", torch.sin(t).float())
        b = 2 * math.pi * torch.outer(torch.arange(n2, dtype=torch.float64), torch.arange(half, dtype=torch.float64))
        c2, s2 = torch.cos(b / n2), torch.sin(b / n2)
        self.register_buffer("dft2", torch.cat([torch.cat([c2, -s2], 1), torch.cat([s2, c2], 1)]).float())
        # Stage 2 leaves bin k1 + n1 * k2 at position k1 * half + k2: fold that order into the mel matrix.
        bins = (torch.arange(n1)[:, None] + n1 * torch.arange(half)[None, :]).reshape(-1)
        fb = fe.mel_fb.detach().double().t()  # (n_fft // 2 + 1, n_mels)
        mel = torch.zeros(n1 * half, fb.shape[1], dtype=torch.float64)
        mel[bins <= n // 2] = fb[bins[bins <= n // 2]]
        self.register_buffer("mel", mel.float())

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x, batch, frames = wave, wave.shape[0], self.frames
        if self.center:
            x = F.pad(x[:, None, :], (self.n // 2, self.n // 2), mode=self.pad_mode)[:, 0]  # (B, T + n)
        if self.index is None:
            r = self.n // self.hop
            blocks = x[:, :(frames - 1 + r) * self.hop].reshape(batch, frames - 1 + r, self.hop)
            x = torch.cat([blocks[:, j:j + frames] for j in range(r)], dim=-1)  # (B, F, n)
        else:
            x = x[:, self.index]  # (B, F, n)
        x = (x.reshape(batch, frames, self.n1, self.n2) * self.window).transpose(-1, -2)  # (B, F, n2, n1)
        a = torch.matmul(x.reshape(-1, self.n1), self.dft1).reshape(batch, frames, self.n2, 2 * self.n1)
        re, im = a[..., :self.n1], a[..., self.n1:]  # stage 1 over n1: (B, F, n2, k1)
        b = torch.cat([re * self.tw_cos + im * self.tw_sin, im * self.tw_cos - re * self.tw_sin], dim=-2)
        b = b.transpose(-1, -2).reshape(-1, 2 * self.n2)  # (B F n1, [re | im] over n2)
        z = torch.matmul(b, self.dft2).reshape(batch, frames, self.n1, -1)  # stage 2: (B, F, k1, [re | im] k2)
        h = z.shape[-1] // 2
        power = (z[..., :h] * z[..., :h] + z[..., h:] * z[..., h:]).reshape(batch, frames, -1)
        if self.power != 2.0:
            power = power.sqrt() if self.power == 1.0 else power.pow(self.power / 2.0)
        mel = torch.matmul(power, self.mel)  # (B, F, n_mels)
        db = 10.0 * torch.log10(torch.clamp(mel, min=self.amin)) - 10.0 * math.log10(max(self.amin, self.ref))
        if self.top_db is not None:
            db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - self.top_db)
        if self.normalize == "per_clip":
            db = (db - db.mean(dim=(-2, -1), keepdim=True)) / (db.std(dim=(-2, -1), keepdim=True) + self.eps)
        elif self.normalize == "fixed":
            db = (db - self.mean) / self.std
        return db.transpose(1, 2).unsqueeze(1)  # (B, 1, n_mels, F)


def _fast_frontend(model: AudioClassifier, example: torch.Tensor, atol: float = 1e-3) -> nn.Module | None:
    """:class:`_MatmulLogMel` for ``model`` when it reproduces ``model.frontend`` on ``example``, else None."""
    try:
        fast = _MatmulLogMel(model.frontend, example.shape[-1])
        with torch.no_grad():
            diff = float((fast(example) - model.frontend(example)).abs().max())
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:
        log.warning("exporting the standard STFT frontend (matmul frontend unavailable: %s)", err)
        return None
    if diff > atol:
        log.warning("exporting the standard STFT frontend (matmul frontend differs by %.3g)", diff)
        return None
    return fast


class _Logits(nn.Module):
    """``wave (B, T) -> (clip (B, C), frame (B, F, C))`` logits as a plain tuple for the exporter, optionally
    with a replacement frontend (SpecAugment is skipped: it is the identity in eval mode)."""

    def __init__(self, model: AudioClassifier, frontend: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.frontend = frontend

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frontend is None:
            out = self.model(wave)
        else:
            out = self.model.forward_head(self.model.backbone(self.frontend(wave)))
        return out.clip, out.frame


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is not installed (pip install 'nfaudio[{extra}]')") from err


def export_onnx(model: AudioClassifier | str | os.PathLike, out: str | os.PathLike, *,
                classes: Sequence[str] | None = None, duration: float | None = None, activation: str | None = None,
                opset: int = OPSET, check: bool = True, atol: float = 1e-4, fast_frontend: bool = True) -> Path:
    """Export a model (frontend included) to ONNX: input ``wave (batch, T)`` float32, outputs ``clip
    (batch, C)`` and ``frame (batch, F, C)`` logits, batch dynamic, ``T`` the window length.

    Metadata (``metadata_props``, JSON values): ``nfaudio.classes``, ``nfaudio.sample_rate``,
    ``nfaudio.duration``, ``nfaudio.activation``, ``nfaudio.fmin``/``fmax``, ``nfaudio.frame_seconds``,
    ``nfaudio.model_config``, ``nfaudio.version``.

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
        atol: largest allowed absolute difference of the logits for ``check``.
        fast_frontend: export the STFT as two small DFT matrix products (several times faster in
            onnxruntime and OpenVINO than the ONNX ``STFT`` op; used only where it matches the frontend).

    Returns:
        The path written.

    Raises:
        ImportError: ``onnx`` is not installed.
        RuntimeError: ``check`` found a difference above ``atol``.
    """
    onnx = _require("onnx", "onnx")
    if isinstance(model, (str, os.PathLike)):
        model, meta = load_checkpoint(model)
        classes = meta["classes"] if classes is None else classes
        duration = meta["duration"] if duration is None else duration
        activation = activation or meta["activation"]
    else:
        model = copy.deepcopy(model)  # the caller's model keeps its mode, device and state
    model = model.eval().cpu()
    classes = list(classes) if classes is not None else [f"class_{i}" for i in range(model.num_classes)]
    meta = _model_meta(model, classes, duration or 5.0, activation)
    _check_activation(meta["activation"])
    n = int(round(meta["duration"] * meta["sample_rate"]))
    example = torch.randn(2, n, generator=torch.Generator().manual_seed(0)) * 0.1
    buf = io.BytesIO()
    axes = {"wave": {0: "batch"}, "clip": {0: "batch"}, "frame": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer / exporter-deprecation chatter
        frontend = _fast_frontend(model, example) if fast_frontend else None
        # The wrapper must be in eval mode too: the exporter restores the wrapper's mode after tracing,
        # which would switch the wrapped model (SpecAugment, dropout, drop-path) back to training.
        torch.onnx.export(_Logits(model, frontend).eval(), (example,), buf, dynamo=False, opset_version=opset,
                          input_names=["wave"], output_names=["clip", "frame"], dynamic_axes=axes)
    proto = onnx.load_from_string(buf.getvalue())
    meta.update(frame_seconds=float(model.frame_seconds), model_config=model.config.to_dict(),
                frontend_graph="stft" if frontend is None else "matmul_dft", version=nfaudio.__version__)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = _META_PREFIX + key, json.dumps(value)
    proto.doc_string = "nfaudio model: wave (batch, samples) -> clip (batch, C), frame (batch, F, C) logits"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    if check:
        _check_parity(model, out, atol)
    return out


def _check_parity(model: AudioClassifier, path: Path, atol: float) -> float:
    """Max |torch - onnxruntime| over clip and frame logits on a random batch of 3; raise above ``atol``."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.info("onnxruntime not installed: %s not checked against torch", path)
        return float("nan")
    meta = read_onnx_metadata(path)
    wave = torch.randn(3, int(round(meta["duration"] * meta["sample_rate"])),
                       generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.inference_mode():
        ref = model(wave)
    clip, frame = _ort_session(str(path), "cpu", None).run(None, {"wave": wave.numpy()})
    diff = max(float(np.abs(clip - ref.clip.numpy()).max()), float(np.abs(frame - ref.frame.numpy()).max()))
    if diff > atol:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {diff:.3g} > {atol:g}")
    log.info("exported %s (max |onnx - torch| = %.2g)", path, diff)
    return diff


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``nfaudio.*`` metadata of an exported file (keys without the prefix, JSON-decoded).

    Raises:
        ValueError: the file was not written by :func:`export_onnx`.
    """
    onnx = _require("onnx", "onnx")
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key[len(_META_PREFIX):]: json.loads(p.value) for p in proto.metadata_props
            if p.key.startswith(_META_PREFIX)}
    missing = {"classes", "sample_rate", "duration"} - set(meta)
    if missing:
        raise ValueError(f"{path}: not an nfaudio ONNX export (no {sorted(missing)} metadata)")
    return meta


# ----------------------------------------------------------------------------- runtimes
def _ort_session(path: str, device: str, threads: int | None) -> Any:
    ort = _require("onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in ort.get_available_providers()):
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(path, opts, providers=providers)


class _RuntimeScorer:
    """Mean probability over several exported models run by a runtime; subclasses set ``_run``."""

    name = ""

    def __init__(self, paths: Sequence[str | os.PathLike], activation: str, sample_rate: int) -> None:
        _check_activation(activation)
        if not paths:
            raise ValueError("a scorer needs at least one model")
        self.paths = [str(p) for p in paths]
        self.activation = activation
        self.sample_rate = int(sample_rate)

    def _clip_logits(self, index: int, waves: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        waves = np.ascontiguousarray(waves, dtype=np.float32)
        total = sum(activate(self._clip_logits(i, waves), self.activation) for i in range(len(self.paths)))
        return (total / len(self.paths)).astype(np.float32)


class OnnxScorer(_RuntimeScorer):
    """onnxruntime sessions (all graph optimisations, ``threads`` intra-op threads, CUDA when asked).

    Args:
        paths: ``.onnx`` files from :func:`export_onnx`.
        activation: "sigmoid" or "softmax".
        sample_rate: the models' sample rate.
        device: "cpu", "cuda" or "auto".
        threads: intra-op threads (default: onnxruntime's choice, one per physical core).
    """

    name = "onnxruntime"

    def __init__(self, paths: Sequence[str | os.PathLike], activation: str, sample_rate: int, device: str = "cpu",
                 threads: int | None = None) -> None:
        super().__init__(paths, activation, sample_rate)
        self.sessions = [_ort_session(p, device, threads) for p in self.paths]

    def _clip_logits(self, index: int, waves: np.ndarray) -> np.ndarray:
        return self.sessions[index].run(["clip"], {"wave": waves})[0]


class OpenVinoScorer(_RuntimeScorer):
    """OpenVINO CPU models compiled from the ONNX files.

    Args as :class:`OnnxScorer` (``device`` is an OpenVINO device name; "auto"/"cpu" mean "CPU"), plus
    ``precision``: "fp32" (default; matches torch) or "bf16" (``INFERENCE_PRECISION_HINT=bf16``: about 2x
    faster on CPUs with AVX512-BF16/AMX, probabilities within ~0.02 of fp32).
    """

    name = "openvino"

    def __init__(self, paths: Sequence[str | os.PathLike], activation: str, sample_rate: int, device: str = "cpu",
                 threads: int | None = None, precision: str = "fp32") -> None:
        super().__init__(paths, activation, sample_rate)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        ov = _require("openvino", "openvino")
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision != "fp32":
            self.name = f"openvino-{precision}"
        target = "CPU" if device in ("auto", "cpu") else device.upper()
        self.compiled = [core.compile_model(p, target, config) for p in self.paths]

    def _clip_logits(self, index: int, waves: np.ndarray) -> np.ndarray:
        compiled = self.compiled[index]
        return compiled(waves)[compiled.output("clip")]


def load_runtime_scorer(paths: Sequence[str | os.PathLike], backend: str, device: str = "cpu",
                        threads: int | None = None, precision: str = "fp32"
                        ) -> tuple[_RuntimeScorer, list[dict[str, Any]]]:
    """An :class:`OnnxScorer`/:class:`OpenVinoScorer` over ``.onnx`` files or checkpoints (exported to a
    temporary folder first, kept for the scorer's lifetime), plus each model's metadata.

    Raises:
        ValueError: unknown backend, or a precision other than fp32 for onnxruntime.
        ImportError: the runtime is not installed.
    """
    if precision != "fp32" and backend != "openvino":
        raise ValueError(f"precision {precision!r} needs the openvino backend")
    classes = {"onnxruntime": OnnxScorer, "openvino": OpenVinoScorer}
    if backend not in classes:
        raise ValueError(f"backend must be one of {sorted(classes)}, got {backend!r}")
    _require("onnxruntime" if backend == "onnxruntime" else "openvino", "onnx" if backend == "onnxruntime"
             else "openvino")
    tmp = None
    files, metas = [], []
    for i, p in enumerate(map(Path, paths)):
        if p.suffix != ".onnx":
            tmp = tmp or tempfile.TemporaryDirectory(prefix="nfaudio-onnx-")
            p = export_onnx(p, Path(tmp.name) / f"model{i}.onnx", check=False)
        files.append(p)
        metas.append(read_onnx_metadata(p))
    extra = {"precision": precision} if backend == "openvino" else {}
    scorer = classes[backend](files, metas[0].get("activation", "sigmoid"), metas[0]["sample_rate"], device,
                              threads, **extra)
    scorer._tmpdir = tmp  # keeps the exported files while the scorer lives
    return scorer, metas
