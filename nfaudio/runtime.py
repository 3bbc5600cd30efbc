"""How models run: the device choice, the thread policy, and running a caller's model without changing it.

A library function that is handed a user's model (the predictor, the exporter, later the embedding and probe
paths) scores it in eval mode and leaves it as it found it: :func:`eval_mode` switches every submodule to eval
for the duration of a block and restores each one's own ``training`` flag afterwards.

Threads: one policy for torch, onnxruntime and OpenVINO, an explicit number always winning. Training
(:func:`intra_op_threads`) gives the model the usable cores minus its DataLoader workers, at least one: those
workers decode, resample and augment every step and are busy all the time, so a core each keeps them and the
model threads from oversubscribing a small CPU. Prediction (:func:`inference_threads`) gives the model every
usable core: its decode workers only read and cut audio, light next to the model, and block while the model
works, so a core held back for them is mostly idle (on 2 cores, 1 thread beside 1 decode worker scored a
5-fold eca_nfnet_l0 ensemble at 6.8x real time, 2 threads at 9.5x; ``benchmarks/predict_whole.py``).
:func:`torch_threads` applies a count to torch for one block and restores the caller's setting.

torch is imported inside the functions that need it, so the thread policy costs nothing to a process that runs
onnxruntime or OpenVINO only (``nfaudio predict --backend onnxruntime`` with a cached export never loads torch).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["eval_mode", "inference_threads", "intra_op_threads", "module_device", "resolve_device", "same_device",
           "torch_threads", "usable_cores"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; any other name is passed to ``torch.device``."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module with neither."""
    import torch

    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def same_device(a: torch.device, b: torch.device) -> bool:
    """True for the same device; ``cuda`` (no index) stands for the current CUDA device."""

    def index(d: torch.device) -> int:
        if d.index is not None:
            return d.index
        import torch

        return torch.cuda.current_device() if d.type == "cuda" else 0

    return a.type == b.type and index(a) == index(b)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (every submodule) in eval mode for the block, then restore each submodule's own mode.

    Restoring per submodule (not ``module.train(was_training)``) keeps a deliberately mixed state, such as a
    frozen backbone in eval mode inside a model in training mode.
    """
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS reports one, else ``os.cpu_count()``.

    Returns:
        At least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows) or the call is refused
        return max(1, os.cpu_count() or 1)


def intra_op_threads(requested: int | None = None, workers: int = 0) -> int:
    """The intra-op thread count for torch, onnxruntime and OpenVINO.

    Args:
        requested: an explicit count; wins when given.
        workers: worker processes (DataLoader or decode workers) that run beside the model; each takes a core
            from the default.

    Returns:
        ``requested``, else ``max(1, usable_cores() - workers)``.

    Raises:
        ValueError: ``requested`` is below 1, or ``workers`` is negative.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        return int(requested)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return max(1, usable_cores() - workers)


def inference_threads(requested: int | None = None) -> int:
    """The intra-op thread count of a predictor's backend (torch, onnxruntime or OpenVINO): every usable core.

    Decode workers are not subtracted (as :func:`intra_op_threads` does for training): they block on their
    pipe while the model scores, so when the model is the heavy part, which is when speed matters, a held-back
    core idles. Measured on 2 cores, one decode worker beside (``benchmarks/predict_whole.py``): a 5-fold
    eca_nfnet_l0 ensemble 6.8x -> 9.5x real time, the demo's 2-fold nfaudio_small 158x -> 190x; only an
    ensemble so light that decoding is a large share of its time loses (5 folds of the 0.03M-parameter
    nfaudio_tiny: 191x -> 164x); ``threads`` (``--threads 1``) restores the old split for such a case. The decode
    workers run at the lowest priority (:data:`nfaudio.decode.WORKER_NICE`), so that they decode in the model threads'
    gaps rather than preempting one of them.

    Args:
        requested: an explicit count; wins when given.

    Returns:
        ``requested``, else :func:`usable_cores`.

    Raises:
        ValueError: ``requested`` is below 1.
    """
    return intra_op_threads(requested, workers=0)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, then restore the previous count (also on errors).

    Only intra-op threads change; torch's inter-op pool is left alone (it can be set once per process only).

    Args:
        threads: intra-op threads for the block, e.g. from :func:`intra_op_threads`.

    Raises:
        ValueError: ``threads`` is below 1.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
