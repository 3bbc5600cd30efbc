"""Model variants as data: the :class:`ModelConfig` dataclass, the table of named variants, and the table
of nfaudio's own NormFreeNet backbones (:data:`LOCAL_BACKBONES`, built by :mod:`nfaudio.models.backbone`).

A variant is one row: a name and the :class:`ModelConfig` fields it sets. The table holds every
NFNet-family model of timm (``timm.list_models(module="nfnet")``: NFNet-F, ECA-NFNet-L, NF-ResNet,
NF-RegNet, ...; Brock et al. 2021) plus nfaudio's own rows (a tiny NFNet for tests and the demo, and
BirdCLEF-style recipes). Any other timm backbone (``resnet50``, ``efficientnet_b0``, ...) is accepted
by name too, so normalizer-free and batch-norm networks can be compared with the same head.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
from dataclasses import dataclass, field
from typing import Any

from nfaudio.choices import HEADS, POOLINGS

__all__ = [
    "HEADS", "LOCAL_BACKBONES", "NFAUDIO_VARIANTS", "POOLINGS", "ModelConfig", "list_models", "resolve_config",
]


# Dict-valued fields: a variant's value is updated (not replaced) by a create_model override.
_MERGED_FIELDS = ("frontend", "spec_augment", "backbone_kwargs")


def _tiny_nfnet_cfg() -> Any:
    from timm.models.nfnet import NfCfg

    # NF-ResNet-style: one bottleneck block per stage, 16-64 channels, 3x3 conv + max-pool stem,
    # ECA attention with the NF gain, SiLU with the NF gamma; overall reduction 32.
    return NfCfg(depths=(1, 1, 1, 1), channels=(16, 32, 48, 64), stem_type="3x3_pool", stem_chs=16,
                 group_size=8, bottle_ratio=0.25, attn_layer="eca", attn_kwargs={}, act_layer="silu")


def _small_nfnet_cfg() -> Any:
    from timm.models.nfnet import NfCfg

    # The tiny net widened and deepened (32-256 channels, 1-1-2-1 blocks, ~0.15M parameters): a CPU-trainable
    # NFNet for small real datasets and the demo.
    return NfCfg(depths=(1, 1, 2, 1), channels=(32, 64, 128, 256), stem_type="3x3_pool", stem_chs=32,
                 group_size=8, bottle_ratio=0.5, attn_layer="eca", attn_kwargs={}, act_layer="silu")


_LOCAL_META = dict(first_conv="stem.conv", classifier="head.fc", num_classes=1000, input_size=(3, 224, 224))

# nfaudio-defined NormFreeNet backbones: name -> (NfCfg factory, timm-style metadata).
LOCAL_BACKBONES: dict[str, tuple[Any, dict[str, Any]]] = {
    "tiny_nfnet": (_tiny_nfnet_cfg, _LOCAL_META),
    "small_nfnet": (_small_nfnet_cfg, _LOCAL_META),
}

# nfaudio's own rows. Keys are ModelConfig fields (all but name and num_classes).
NFAUDIO_VARIANTS: dict[str, dict[str, Any]] = {
    # 4-stage NF-ResNet-style net with 16-64 channels (~14k parameters): tests and the demo.
    "nfaudio_tiny": dict(backbone="tiny_nfnet"),
    # Same design, 32-256 channels and 1-1-2-1 blocks: trains on small real datasets on a CPU.
    "nfaudio_small": dict(backbone="small_nfnet"),
    # BirdCLEF-style: 32 kHz, 128 mels over 50 Hz-14 kHz, SpecAugment, stochastic depth, head dropout.
    "birdclef_eca_nfnet_l0": dict(
        backbone="eca_nfnet_l0", frontend=dict(n_mels=128, fmin=50.0, fmax=14000.0),
        spec_augment=dict(), drop_path_rate=0.1, drop_rate=0.25,
    ),
    "birdclef_dm_nfnet_f0": dict(
        backbone="dm_nfnet_f0", frontend=dict(n_mels=128, fmin=50.0, fmax=14000.0),
        spec_augment=dict(), drop_path_rate=0.1, drop_rate=0.25,
    ),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an :class:`~nfaudio.models.AudioClassifier` (saved with checkpoints).

    Args:
        name: the registry name the model was created from (informational).
        backbone: timm model name (optionally with a pretrained tag, ``eca_nfnet_l0.ra2_in1k``) or an
            nfaudio backbone (``tiny_nfnet``).
        num_classes: number of output classes (>= 1).
        head: "sed" (attention over time, PANNs-style) or "pooled" (global pooling + linear).
        pooling: "avg", "max", "avgmax" (mean of both) or "gem" (learnable p). The SED head pools
            over frequency with it; the pooled head over frequency and time (and over frequency only
            for its frame logits).
        frontend: keyword arguments of :class:`nfaudio.frontend.LogMel`.
        spec_augment: keyword arguments of :class:`nfaudio.frontend.SpecAugment`; ``None`` disables it.
        drop_rate: dropout in the head.
        drop_path_rate: stochastic depth rate of the backbone.
        stem_stride: stride of the backbone's first conv (``None`` keeps the backbone's own); 1 on a
            stride-2 stem doubles the time (and frequency) resolution of the features.
        channels_last: run the backbone in ``torch.channels_last`` memory format.
        head_hidden: SED head only: width of the 1x1 conv + ReLU before ``att``/``cla``; ``None``
            means the backbone's feature width, 0 removes that layer.
        smoothing: SED head only: kernel of the max + avg 1-D pooling over time (odd; 1 disables).
        att_clamp: SED head only: attention logits are soft-clamped to ``(-att_clamp, att_clamp)``.
        backbone_kwargs: extra keyword arguments of ``timm.create_model``.

    Raises:
        ValueError: on an invalid value (unknown head or pooling, ``num_classes < 1``, ...).
    """

    name: str
    backbone: str
    num_classes: int
    head: str = "sed"
    pooling: str = "avg"
    frontend: dict[str, Any] = field(default_factory=dict)
    spec_augment: dict[str, Any] | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    stem_stride: int | None = None
    channels_last: bool = False
    head_hidden: int | None = None
    smoothing: int = 3
    att_clamp: float = 10.0
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if int(self.num_classes) != self.num_classes or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        for key in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.stem_stride is not None and self.stem_stride < 1:
            raise ValueError(f"stem_stride must be >= 1 or None, got {self.stem_stride}")
        if self.head_hidden is not None and self.head_hidden < 0:
            raise ValueError(f"head_hidden must be >= 0 or None, got {self.head_hidden}")
        if self.smoothing < 1 or self.smoothing % 2 == 0:
            raise ValueError(f"smoothing must be an odd kernel size >= 1, got {self.smoothing}")
        if self.att_clamp <= 0:
            raise ValueError(f"att_clamp must be > 0, got {self.att_clamp}")
        # Own copies, so a caller's dict mutated later cannot change a built model's config.
        for key in _MERGED_FIELDS:
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, dict(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (``dataclasses.asdict``), safe for ``torch.save`` / JSON / YAML."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: a key is not a field (named in the message), or a value is invalid.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown}; known: {sorted(names)}")
        return cls(**data)


@functools.cache
def _variants() -> dict[str, dict[str, Any]]:
    """The registry: every timm NFNet-family model (one row each) plus :data:`NFAUDIO_VARIANTS`."""
    import timm

    rows = {name: {"backbone": name} for name in timm.list_models(module="nfnet")}
    rows.update(NFAUDIO_VARIANTS)
    return rows


def list_models(pattern: str = "*") -> list[str]:
    """Names in the nfaudio registry matching a shell-style pattern, sorted.

    Args:
        pattern: ``fnmatch`` pattern, e.g. ``"*nfnet_l*"``.

    Returns:
        Matching names. ``create_model`` also accepts any other timm model name.
    """
    return sorted(n for n in _variants() if fnmatch.fnmatchcase(n, pattern))


def _is_backbone(name: str) -> bool:
    import timm

    return name in LOCAL_BACKBONES or timm.is_model(name)


def _unknown_name_error(name: str) -> ValueError:
    import timm

    candidates = sorted(set(_variants()) | set(timm.list_models()))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return ValueError(
        f"unknown model {name!r}{hint} (`nfaudio list-models` shows the registry; any timm model name "
        "is accepted as a backbone too)"
    )


def resolve_config(name: str, num_classes: int, head: str | None = None, **overrides: Any) -> ModelConfig:
    """Build the :class:`ModelConfig` of a registry row (or a bare timm backbone) with overrides.

    Args:
        name: registry name, or any timm model name, or an nfaudio backbone name.
        num_classes: number of output classes.
        head: "sed" or "pooled"; ``None`` keeps the variant's head ("sed" for every built-in row).
        **overrides: other :class:`ModelConfig` fields. Dict fields (``frontend``, ``spec_augment``,
            ``backbone_kwargs``) update the variant's dict; ``spec_augment=None`` disables it.

    Returns:
        The validated config.

    Raises:
        ValueError: unknown name (with close matches) or invalid value.
        TypeError: an override that is not a ModelConfig field.
    """
    rows = _variants()
    if name in rows:
        row = dict(rows[name])
    elif _is_backbone(name):
        row = {"backbone": name}
    else:
        raise _unknown_name_error(name)
    allowed = {f.name for f in dataclasses.fields(ModelConfig)} - {"name", "num_classes"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        close = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
        hints = ", ".join(f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items())
        raise TypeError(f"unknown model option(s) {hints}; valid: {sorted(allowed)}")
    for key, value in overrides.items():
        if key in _MERGED_FIELDS and isinstance(value, dict) and isinstance(row.get(key), dict):
            row[key] = {**row[key], **value}
        else:
            row[key] = value
    if head is not None:
        row["head"] = head
    return ModelConfig(name=name, num_classes=num_classes, **row)
