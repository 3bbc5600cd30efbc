"""Adaptive Gradient Clipping (AGC), unit-wise, with the classifier excluded by module.

Implements AGC from Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
Normalization" (https://arxiv.org/abs/2102.06171), section 4: for every unit ``i`` of a parameter ``W``
(an output row of a conv/linear weight, i.e. all dims except 0 reduced; a bias or other 1-D parameter is
one unit as a whole vector) the gradient ``G_i`` is rescaled when

    ||G_i|| > clip_factor * max(||W_i||, eps)

to ``G_i * clip_factor * max(||W_i||, eps) / ||G_i||``. The arithmetic is timm's
(:func:`timm.utils.agc.adaptive_clip_grad` and :func:`timm.utils.agc.unitwise_norm`, which follow the
DeepMind JAX reference); this module only decides *which* parameters are clipped.

The paper does not clip the final linear layer. timm skips the last two parameters by position, which is
wrong for a SED head with two 1x1 convs (attention + class projection); here the excluded parameters are
chosen by module (``model.classifier_modules()`` by default) and/or by parameter-name patterns.

Example:
    >>> agc = AGC.from_model(model, clip_factor=0.01)
    >>> scaler.scale(loss).backward()
    >>> agc.clip_(scaler, optimizer)  # unscales, then clips; do not call scaler.unscale_ yourself
    >>> scaler.step(optimizer)
    >>> scaler.update()
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable

import torch
from timm.utils.agc import adaptive_clip_grad, unitwise_norm
from torch import nn

__all__ = ["AGC", "adaptive_clip_grad_", "agc_parameters"]

logger = logging.getLogger(__name__)


def _check_hparams(clip_factor: float, eps: float) -> None:
    if not clip_factor > 0:
        raise ValueError(f"clip_factor must be > 0, got {clip_factor}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def agc_parameters(
    model: nn.Module,
    exclude: Iterable[nn.Module] | None = None,
    exclude_names: Iterable[str] = (),
) -> list[nn.Parameter]:
    """Select the parameters of ``model`` that AGC should clip.

    Args:
        model: the model.
        exclude: modules whose parameters (recursively) are not clipped. ``None`` means
            ``model.classifier_modules()`` (the head's class projection(s)); pass ``[]`` to exclude no module.
        exclude_names: ``fnmatch`` patterns on parameter names (as in ``model.named_parameters()``,
            e.g. ``"head.cla.*"``) that are not clipped either.

    Returns:
        The parameters with ``requires_grad`` that are neither in an excluded module nor match a pattern,
        in ``model.named_parameters()`` order.

    Raises:
        ValueError: ``exclude`` is None and the model has no ``classifier_modules()`` method, or an
            excluded module is not a submodule of ``model``.
    """
    if exclude is None:
        classifier_modules = getattr(model, "classifier_modules", None)
        if not callable(classifier_modules):
            raise ValueError(
                f"{type(model).__name__} has no classifier_modules() method, so AGC cannot tell which "
                "layers form the classifier; pass exclude=[...the final classification module(s)...] "
                "(or exclude=[] to clip every parameter)"
            )
        exclude = classifier_modules()
    exclude = list(exclude)
    patterns = [exclude_names] if isinstance(exclude_names, str) else list(exclude_names)

    submodule_ids = {id(m) for m in model.modules()}
    for module in exclude:
        if id(module) not in submodule_ids:
            raise ValueError(f"excluded module {type(module).__name__} is not a submodule of the model")
    excluded_ids = {id(p) for module in exclude for p in module.parameters()}

    selected: list[nn.Parameter] = []
    excluded_names: list[str] = []
    matched = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        hits = [pat for pat in patterns if fnmatch.fnmatchcase(name, pat)]
        matched.update(hits)
        if id(param) in excluded_ids or hits:
            excluded_names.append(name)
        else:
            selected.append(param)
    for pat in patterns:
        if pat not in matched:
            logger.warning("AGC exclude_names pattern %r matches no trainable parameter", pat)
    logger.debug(
        "AGC clips %d parameter tensors, excludes %d: %s", len(selected), len(excluded_names), excluded_names
    )
    return selected


def adaptive_clip_grad_(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    clip_factor: float = 0.01,
    eps: float = 1e-3,
    norm_type: float = 2.0,
) -> None:
    """Clip gradients in place, unit-wise (AGC). Parameters without a gradient are skipped.

    Units whose gradient norm is below ``clip_factor * max(||W_unit||, eps)`` keep their gradient bit for
    bit. Gradients must already be unscaled (see :meth:`AGC.clip_` for mixed precision).

    Args:
        parameters: tensors whose ``.grad`` is clipped (select them with :func:`agc_parameters`).
        clip_factor: the paper's lambda; the maximum gradient-to-weight norm ratio per unit.
        eps: floor on the weight norm, so zero-initialised weights can still move.
        norm_type: the p of the p-norm (2 in the paper).

    Raises:
        ValueError: ``clip_factor <= 0`` or ``eps < 0``.
    """
    _check_hparams(clip_factor, eps)
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    params = [p for p in params if p.grad is not None]
    if logger.isEnabledFor(logging.DEBUG):
        n_clipped = 0
        with torch.no_grad():
            for p in params:
                max_norm = unitwise_norm(p.detach(), norm_type).clamp(min=eps) * clip_factor
                n_clipped += bool((unitwise_norm(p.grad.detach(), norm_type) >= max_norm).any())
        logger.debug("AGC: %d of %d parameter tensors have clipped units", n_clipped, len(params))
    with torch.no_grad():
        adaptive_clip_grad(params, clip_factor=clip_factor, eps=eps, norm_type=norm_type)


class AGC:
    """Holds the parameters and settings of adaptive gradient clipping; call it after ``backward()``.

    Args:
        params: the parameters to clip (e.g. from :func:`agc_parameters`); materialised into a list.
        clip_factor: maximum unit-wise gradient-to-weight norm ratio (the paper's lambda).
        eps: floor on the unit weight norm.
        norm_type: the p of the p-norm.

    Raises:
        ValueError: ``clip_factor <= 0`` or ``eps < 0``.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        clip_factor: float = 0.01,
        eps: float = 1e-3,
        norm_type: float = 2.0,
    ) -> None:
        _check_hparams(clip_factor, eps)
        self.params = list(params)
        self.clip_factor = float(clip_factor)
        self.eps = float(eps)
        self.norm_type = float(norm_type)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        clip_factor: float = 0.01,
        eps: float = 1e-3,
        exclude: Iterable[nn.Module] | None = None,
        exclude_names: Iterable[str] = (),
        norm_type: float = 2.0,
    ) -> AGC:
        """Build an AGC over :func:`agc_parameters` ``(model, exclude, exclude_names)``."""
        return cls(agc_parameters(model, exclude, exclude_names), clip_factor, eps, norm_type)

    def clip_(
        self, scaler: torch.amp.GradScaler | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Clip the gradients in place.

        With a ``scaler`` (mixed precision), gradients are first unscaled with ``scaler.unscale_(optimizer)``
        so the threshold compares true gradients to weights. The caller must then NOT call
        ``scaler.unscale_`` again before ``scaler.step`` (torch raises on a second unscale). If the scaled
        gradients overflowed, the clipped values are meaningless but ``scaler.step`` skips the update anyway.

        Args:
            scaler: the GradScaler used for ``backward``, or None for full-precision gradients.
            optimizer: the optimizer holding the parameters; required with a scaler.

        Raises:
            ValueError: a scaler is given without an optimizer.
        """
        if scaler is not None:
            if optimizer is None:
                raise ValueError("AGC.clip_ needs the optimizer when a GradScaler is given (to unscale it)")
            scaler.unscale_(optimizer)
        adaptive_clip_grad_(self.params, self.clip_factor, self.eps, self.norm_type)

    def __call__(
        self, scaler: torch.amp.GradScaler | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Same as :meth:`clip_`."""
        self.clip_(scaler, optimizer)

    def extra_repr(self) -> str:
        """Settings and the number of clipped tensors/elements, for ``repr``."""
        n_elements = sum(p.numel() for p in self.params)
        return (
            f"num_tensors={len(self.params)}, num_elements={n_elements}, clip_factor={self.clip_factor}, "
            f"eps={self.eps}, norm_type={self.norm_type}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
