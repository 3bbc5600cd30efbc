"""How models run: the device choice and running a caller's model without changing it.

A library function that is handed a user's model (the predictor, the exporter, later the embedding and probe
paths) scores it in eval mode and leaves it as it found it: :func:`eval_mode` switches every submodule to eval
for the duration of a block and restores each one's own ``training`` flag afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "module_device", "resolve_device", "same_device"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; any other name is passed to ``torch.device``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module with neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def same_device(a: torch.device, b: torch.device) -> bool:
    """True for the same device; ``cuda`` (no index) stands for the current CUDA device."""

    def index(d: torch.device) -> int:
        if d.index is not None:
            return d.index
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
