"""Prediction backends: a :class:`Scorer` turns a batch of waveforms into ensemble-mean class probabilities.

Three exist: ``torch`` (:class:`TorchScorer`, the reference), ``onnxruntime`` (:class:`OnnxScorer`) and
``openvino`` (:class:`OpenVinoScorer`, optional extra). The last two run graphs written by
:func:`nfaudio.export.export_onnx` (waveform in, clip and frame logits out). Their intra-op threads come from the
one thread policy (:func:`nfaudio.runtime.intra_op_threads`) when the caller passes ``threads``.

Every scorer also embeds (``embed(waves, fold_mode)``: window embeddings and probabilities from one pass; the ONNX
graph needs its ``embedding`` output, ``export_onnx(..., embedding=True)``). An ensemble's embeddings are combined
by :func:`combine_embeddings`: "mean" averages the models' vectors (``D`` wide; meaningful where the models share
a feature space, e.g. folds fine-tuned from the same pretrained weights), "concat" puts them side by side
(``models x D`` wide, model order; nothing is mixed).
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from nfaudio.choices import BACKENDS, FOLD_MODES, PRECISIONS
from nfaudio.runtime import eval_mode, module_device, resolve_device, same_device

__all__ = ["ACTIVATIONS", "BACKENDS", "FOLD_MODES", "PRECISIONS", "OnnxScorer", "OpenVinoScorer", "Scorer",
           "TorchScorer", "activate", "check_activation", "combine_embeddings", "embedding_width", "ort_session",
           "require"]

ACTIVATIONS = ("sigmoid", "softmax")


class Scorer(Protocol):
    """Waveforms ``(B, T)`` float32 at ``sample_rate`` -> class probabilities ``(B, C)`` (ensemble mean); ``embed``
    gives ``(embeddings (B, D'), probabilities (B, C))``, ``embedding_dims`` each model's ``D``."""

    sample_rate: int
    name: str
    embedding_dims: list[int]

    def __call__(self, waves: np.ndarray) -> np.ndarray: ...

    def embed(self, waves: np.ndarray, fold_mode: str = "mean") -> tuple[np.ndarray, np.ndarray]: ...


def _check_fold_mode(fold_mode: str) -> None:
    if fold_mode not in FOLD_MODES:
        raise ValueError(f"fold_mode must be one of {FOLD_MODES}, got {fold_mode!r}")


def embedding_width(dims: Sequence[int], fold_mode: str = "mean") -> int:
    """Width of an ensemble's combined embeddings: ``D`` ("mean"; the models must agree) or ``sum(D)`` ("concat").

    Raises:
        ValueError: unknown mode, no model, or "mean" over models of different widths.
    """
    _check_fold_mode(fold_mode)
    if not dims:
        raise ValueError("no model to embed with")
    if fold_mode == "mean" and len(set(dims)) != 1:
        raise ValueError(f"fold_mode 'mean' needs models of one embedding width, got {list(dims)}; use 'concat'")
    return int(sum(dims)) if fold_mode == "concat" else int(dims[0])


def combine_embeddings(parts: Sequence[np.ndarray], fold_mode: str = "mean") -> np.ndarray:
    """The models' ``(B, D_i)`` embeddings as one float32 ``(B, D')`` array (see the module docstring)."""
    embedding_width([p.shape[-1] for p in parts], fold_mode)
    if fold_mode == "concat":
        return np.concatenate(parts, axis=-1).astype(np.float32, copy=False)
    return (sum(np.asarray(p, np.float64) for p in parts) / len(parts)).astype(np.float32)


def activate(logits: Any, activation: str) -> Any:
    """Class probabilities from logits: sigmoid (multi-label), or softmax over the last axis (single-label).

    The one place that maps an activation name to its function: a torch tensor gives a float32 tensor, anything
    else a float32 numpy array.

    Raises:
        ValueError: unknown activation.
    """
    check_activation(activation)
    if isinstance(logits, torch.Tensor):
        logits = logits.float()
        return torch.softmax(logits, -1) if activation == "softmax" else torch.sigmoid(logits)
    logits = np.asarray(logits, dtype=np.float32)
    if activation == "softmax":
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-logits))


def check_activation(activation: str) -> None:
    """Raise ``ValueError`` for an activation other than "sigmoid" or "softmax"."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


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
        check_activation(activation)
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
        self.embedding_dims = [int(m.embedding_dim) for m in self.models]

    @torch.inference_mode()
    def __call__(self, waves: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
        total = None
        with eval_mode(*self.models):
            for m in self.models:
                p = activate(m(x).clip, self.activation)
                total = p if total is None else total + p
        return (total / len(self.models)).cpu().numpy()

    @torch.inference_mode()
    def embed(self, waves: np.ndarray, fold_mode: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings (B, D'), probabilities (B, C))`` from one pass of each model."""
        embedding_width(self.embedding_dims, fold_mode)
        x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
        embs, total = [], None
        with eval_mode(*self.models):
            for m in self.models:
                out = m.forward_with_embedding(x)
                p = activate(out.clip, self.activation)
                total = p if total is None else total + p
                embs.append(out.embedding.float().cpu().numpy())
        return combine_embeddings(embs, fold_mode), (total / len(self.models)).cpu().numpy()


def require(module: str, extra: str) -> Any:
    """Import an optional runtime, or raise ``ImportError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is not installed (pip install 'nfaudio[{extra}]')") from err


# ----------------------------------------------------------------------------- runtimes
def ort_session(path: str, device: str, threads: int | None) -> Any:
    """An onnxruntime session: all graph optimisations, one inter-op thread, ``threads`` intra-op threads."""
    ort = require("onnxruntime", "onnx")
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
        check_activation(activation)
        if not paths:
            raise ValueError("a scorer needs at least one model")
        self.paths = [str(p) for p in paths]
        self.activation = activation
        self.sample_rate = int(sample_rate)

    def _clip_logits(self, index: int, waves: np.ndarray) -> np.ndarray:
        return self._run(index, waves, ["clip"])[0]

    def _run(self, index: int, waves: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        waves = np.ascontiguousarray(waves, dtype=np.float32)
        total = sum(activate(self._clip_logits(i, waves), self.activation) for i in range(len(self.paths)))
        return (total / len(self.paths)).astype(np.float32)

    def _check_embedding(self) -> None:
        missing = [p for p, d in zip(self.paths, self.embedding_dims) if not d]
        if missing:
            raise ValueError(f"{missing[0]} has no embedding output; export it again with embedding=True "
                             "(nfaudio export --embedding)")

    def embed(self, waves: np.ndarray, fold_mode: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings (B, D'), probabilities (B, C))`` from one run of each graph.

        Raises:
            ValueError: a graph without the ``embedding`` output; see :func:`embedding_width`.
        """
        self._check_embedding()
        embedding_width(self.embedding_dims, fold_mode)
        waves = np.ascontiguousarray(waves, dtype=np.float32)
        embs, total = [], 0.0
        for i in range(len(self.paths)):
            clip, emb = self._run(i, waves, ["clip", "embedding"])
            total = total + activate(clip, self.activation)
            embs.append(np.asarray(emb, np.float32))
        return combine_embeddings(embs, fold_mode), (total / len(self.paths)).astype(np.float32)


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
        self.sessions = [ort_session(p, device, threads) for p in self.paths]
        self.embedding_dims = [next((int(o.shape[-1]) for o in s.get_outputs() if o.name == "embedding"), 0)
                               for s in self.sessions]

    def _run(self, index: int, waves: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        return self.sessions[index].run(list(names), {"wave": waves})


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
        ov = require("openvino", "openvino")
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision != "fp32":
            self.name = f"openvino-{precision}"
        target = "CPU" if device in ("auto", "cpu") else device.upper()
        self.compiled = [core.compile_model(p, target, config) for p in self.paths]
        self.embedding_dims = [next((o.get_partial_shape()[-1].get_length() for o in c.outputs
                                     if "embedding" in o.get_names()), 0) for c in self.compiled]

    def _run(self, index: int, waves: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        compiled = self.compiled[index]
        out = compiled(waves)
        return [out[compiled.output(name)] for name in names]
