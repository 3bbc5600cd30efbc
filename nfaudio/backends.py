"""Prediction backends: a :class:`Scorer` turns a batch of waveforms into ensemble-mean class probabilities.

Three exist: ``torch`` (:class:`TorchScorer`, the reference), ``onnxruntime`` (:class:`OnnxScorer`) and
``openvino`` (:class:`OpenVinoScorer`, optional extra). The last two run graphs written by
:func:`nfaudio.export.export_onnx` (waveform in, clip and frame logits out), or the frontend / body pairs of
:func:`nfaudio.export.export_parts` that the export cache holds. Their intra-op threads come from the one thread
policy for prediction (:func:`nfaudio.runtime.inference_threads`) when the caller passes ``threads``.

Shared frontend: the members of an ensemble whose log-mel frontends are the same (settings and buffers; e.g. the
folds of a CV run) compute the spectrogram of a batch once; each member then runs only its backbone and head.
Members with other settings form groups of their own. The scores equal those of the unshared ensemble (the same
operations on the same batch). torch is imported only by the torch scorer, so the runtimes' processes never load it.

Every scorer also embeds (``embed(waves, fold_mode)``: window embeddings and probabilities from one pass; the ONNX
graph needs its ``embedding`` output, ``export_onnx(..., embedding=True)``). An ensemble's embeddings are combined
by :func:`combine_embeddings`: "mean" averages the models' vectors (``D`` wide; meaningful where the models share
a feature space, e.g. folds fine-tuned from the same pretrained weights), "concat" puts them side by side
(``models x D`` wide, model order; nothing is mixed).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from nfaudio.choices import BACKENDS, FOLD_MODES, PRECISIONS
from nfaudio.runtime import eval_mode, module_device, resolve_device, same_device

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ACTIVATIONS", "BACKENDS", "FOLD_MODES", "PRECISIONS", "OnnxScorer", "OpenVinoScorer", "Scorer",
           "TorchScorer", "activate", "check_activation", "combine_embeddings", "embedding_width",
           "frontend_groups", "openvino_core", "ort_session", "require"]

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
    torch = sys.modules.get("torch")  # a tensor means torch is loaded; never import it for numpy input
    if torch is not None and isinstance(logits, torch.Tensor):
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


def frontend_groups(models: Sequence[nn.Module]) -> list[list[int]]:
    """Indices of ``models`` grouped by identical log-mel frontends (same settings, same buffers), in first-seen
    order; a model without a ``frontend`` forms its own group."""
    import torch

    groups: list[list[int]] = []
    keys: list[tuple[str, Any]] = []
    for i, m in enumerate(models):
        fe = getattr(m, "frontend", None)
        settings = getattr(fe, "settings", None)
        if settings is None:
            groups.append([i])
            keys.append(("", None))
            continue
        key = json.dumps(settings(), sort_keys=True, default=str)
        buffers = dict(fe.named_buffers())
        for group, (other_key, other) in zip(groups, keys):
            if other_key == key and other is not None and buffers.keys() == other.keys() and all(
                    torch.equal(buffers[n], other[n]) for n in buffers):
                group.append(i)
                break
        else:
            groups.append([i])
            keys.append((key, buffers))
    return groups


class TorchScorer:
    """Mean probability of PyTorch models (clip logits -> sigmoid/softmax) under ``torch.inference_mode``.

    The models are scored in eval mode and left as they were given (mode, device, weights): a model on another
    device than ``device`` is scored through a copy on ``device``. Models with the same frontend share it (see the
    module docstring): the log-mel of a batch is computed once per group (:func:`frontend_groups`).

    Args:
        models: :class:`~nfaudio.models.AudioClassifier` instances sharing classes and sample rate.
        activation: "sigmoid" (multi-label) or "softmax" (single-label).
        device: "auto" (CUDA when available), "cpu", "cuda", ...
        share_frontend: compute each group's log-mel once (default); ``False`` runs every model whole.

    Raises:
        ValueError: no model, mixed sample rates, unknown activation.
    """

    name = "torch"

    def __init__(self, models: Sequence[nn.Module], activation: str = "sigmoid", device: str = "auto",
                 share_frontend: bool = True) -> None:
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
        self.share_frontend = bool(share_frontend)
        shareable = all(hasattr(m, "forward_spectrogram") for m in self.models)
        self.groups = (frontend_groups(self.models) if self.share_frontend and shareable
                       else [[i] for i in range(len(self.models))])
        self.embedding_dims = [int(m.embedding_dim) for m in self.models]

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
            total = None
            with eval_mode(*self.models):
                for group in self.groups:
                    if len(group) == 1:
                        outs = [self.models[group[0]](x)]
                    else:
                        spec = self.models[group[0]].frontend(x)  # (B, 1, n_mels, frames), once per group
                        outs = [self.models[i].forward_spectrogram(spec) for i in group]
                    for out in outs:
                        p = activate(out.clip, self.activation)
                        total = p if total is None else total + p
            return (total / len(self.models)).cpu().numpy()

    def embed(self, waves: np.ndarray, fold_mode: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings (B, D'), probabilities (B, C))`` from one pass of each model."""
        import torch

        embedding_width(self.embedding_dims, fold_mode)
        x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32)).to(self.device)
        embs, total = [], None
        with torch.inference_mode(), eval_mode(*self.models):
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


_OV_CORE: list[Any] = []  # the process's one openvino.Core, made on first use
_OV_LOCK = threading.Lock()


def openvino_core() -> Any:
    """The process-wide ``openvino.Core``, created on first use and kept until exit.

    One per process, not one per scorer: OpenVINO's CPU plugin (one per Core) swaps the creating thread's
    signal stack (``sigaltstack``) for one it ``mmap``s, and its destructor unmaps that stack even when a later
    Core's plugin saved it as the stack to restore. Two Cores freed in creation order leave the thread on an
    unmapped signal stack, and the next signal with a Python handler (SIGCHLD from a DataLoader worker,
    pytest-timeout's SIGALRM) kills the process with SIGSEGV (tests/test_backends.py reproduces it).
    """
    with _OV_LOCK:
        if not _OV_CORE:
            _OV_CORE.append(require("openvino", "openvino").Core())
        return _OV_CORE[0]


class _RuntimeScorer:
    """Mean probability over several exported models run by a runtime; subclasses load and run one graph.

    Without ``frontends`` each of ``paths`` is a whole model (``wave`` in, ``clip`` out). With them, ``paths[i]``
    is member ``i``'s body (``spec`` in, ``clip`` out) and ``frontends[i]`` its frontend graph (``wave`` in,
    ``spec`` out; ``None``: a whole model); members given the same frontend file share it: it runs once per batch
    for all of them.
    """

    name = ""

    def __init__(self, paths: Sequence[str | os.PathLike], activation: str, sample_rate: int,
                 frontends: Sequence[str | os.PathLike | None] | None = None) -> None:
        check_activation(activation)
        if not paths:
            raise ValueError("a scorer needs at least one model")
        self.paths = [str(p) for p in paths]
        if frontends is not None and len(frontends) != len(self.paths):
            raise ValueError(f"{len(frontends)} frontend graphs for {len(self.paths)} models")
        self.frontends = None if frontends is None else [None if f is None else str(f) for f in frontends]
        self.activation = activation
        self.sample_rate = int(sample_rate)
        groups: dict[str | None, list[int]] = {}
        for i in range(len(self.paths)):
            groups.setdefault(None if self.frontends is None else self.frontends[i], []).append(i)
        self.groups = list(groups.items())  # (frontend file or None, member indices), first-seen order

    def _load(self, path: str) -> Any:
        raise NotImplementedError

    def _run(self, graph: Any, x: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def _load_graphs(self) -> list[Any]:
        self._frontend_graphs = {f: self._load(f) for f, _ in self.groups if f is not None}
        return [self._load(p) for p in self.paths]

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        waves = np.ascontiguousarray(waves, dtype=np.float32)
        total = None
        for frontend, members in self.groups:
            x = waves if frontend is None else self._run(self._frontend_graphs[frontend], waves, ["spec"])[0]
            for i in members:
                p = activate(self._run(self._graphs[i], x, ["clip"])[0], self.activation)
                total = p if total is None else total + p
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
        embs: list[np.ndarray | None] = [None] * len(self.paths)
        total = 0.0
        for frontend, members in self.groups:
            x = waves if frontend is None else self._run(self._frontend_graphs[frontend], waves, ["spec"])[0]
            for i in members:
                clip, emb = self._run(self._graphs[i], x, ["clip", "embedding"])
                total = total + activate(clip, self.activation)
                embs[i] = np.asarray(emb, np.float32)
        return combine_embeddings(embs, fold_mode), (total / len(self.paths)).astype(np.float32)


class OnnxScorer(_RuntimeScorer):
    """onnxruntime sessions (all graph optimisations, ``threads`` intra-op threads, CUDA when asked).

    Args:
        paths: ``.onnx`` files from :func:`export_onnx` (or bodies from :func:`export_parts`, with ``frontends``).
        activation: "sigmoid" or "softmax".
        sample_rate: the models' sample rate.
        device: "cpu", "cuda" or "auto".
        threads: intra-op threads (default: onnxruntime's choice, one per physical core).
        frontends: the members' frontend graphs (see :class:`_RuntimeScorer`); ``None``: whole models.
    """

    name = "onnxruntime"

    def __init__(self, paths: Sequence[str | os.PathLike], activation: str, sample_rate: int, device: str = "cpu",
                 threads: int | None = None, frontends: Sequence[str | os.PathLike | None] | None = None) -> None:
        super().__init__(paths, activation, sample_rate, frontends)
        self._device, self._threads = device, threads
        self.sessions = self._graphs = self._load_graphs()
        self.embedding_dims = [next((int(o.shape[-1]) for o in s.get_outputs() if o.name == "embedding"), 0)
                               for s, _ in self.sessions]

    def _load(self, path: str) -> Any:
        session = ort_session(path, self._device, self._threads)
        return session, session.get_inputs()[0].name

    def _run(self, graph: Any, x: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        session, name = graph
        return session.run(list(names), {name: x})


class OpenVinoScorer(_RuntimeScorer):
    """OpenVINO CPU models compiled from the ONNX files.

    Args as :class:`OnnxScorer` (``device`` is an OpenVINO device name; "auto"/"cpu" mean "CPU"; ``paths`` may
    also be OpenVINO IR ``.xml`` files), plus ``precision``: "fp32" (default; matches torch), "bf16"
    (``INFERENCE_PRECISION_HINT=bf16``: about 2x faster on CPUs with AVX512-BF16/AMX, probabilities within ~0.02
    of fp32) or "int8" (int8 graphs, :mod:`nfaudio.quantize`), and ``cache_blobs``: compiled graphs kept on disk
    beside the graphs and imported next time (:mod:`nfaudio.ov_blobs`).
    """

    name = "openvino"

    def __init__(self, paths: Sequence[str | os.PathLike], activation: str, sample_rate: int, device: str = "cpu",
                 threads: int | None = None, precision: str = "fp32",
                 frontends: Sequence[str | os.PathLike | None] | None = None, cache_blobs: bool = False) -> None:
        super().__init__(paths, activation, sample_rate, frontends)
        self._cache_blobs = cache_blobs
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self._core = openvino_core()
        # int8: the graphs carry their quantization (nncf); the rest of them runs in f32
        self._config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                        "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision != "fp32":
            self.name = f"openvino-{precision}"
        self._target = "CPU" if device in ("auto", "cpu") else device.upper()
        self.compiled = self._graphs = self._load_graphs()
        self.embedding_dims = [next((o.get_partial_shape()[-1].get_length() for o in c.outputs
                                     if "embedding" in o.get_names()), 0) for c in self.compiled]

    def _load(self, path: str) -> Any:
        if self._cache_blobs:
            from nfaudio.ov_blobs import compile_cached
            return compile_cached(self._core, path, self._target, self._config)
        return self._core.compile_model(path, self._target, self._config)

    def _run(self, graph: Any, x: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        out = graph(x)
        return [out[graph.output(name)] for name in names]
