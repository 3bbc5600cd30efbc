"""Typed configuration tree for nfaudio recipes.

A recipe is a YAML file whose sections map one-to-one onto the dataclasses below. Unknown keys are
errors that name the key and its closest match; command-line overrides use dotted keys
(``--set optim.lr=0.01``). Every run directory receives the resolved config (``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nfaudio.choices import CHOICES, PATH_KEYS
from nfaudio.fileio import write_text
from nfaudio.recipes import recipe_path
from nfaudio.schema import ConfigError, build, plain

__all__ = ["Config", "ConfigError", "apply_overrides", "check_choices", "dump_config", "from_dict", "load_config",
           "parse_override"]


@dataclass
class DataConfig:
    """Where the recordings are and how they are read.

    ``kind`` is ``birdclef`` (a Kaggle BirdCLEF root), ``folder`` (``root/<label>/*.ext``), ``csv``
    (a generic ``path,label[,fold][,group]`` manifest) or ``auto`` (guessed from ``root``/``manifest``).
    """

    kind: str = "auto"
    root: str | None = None
    manifest: str | None = None
    metadata: str | None = None
    path_column: str = "path"
    label_column: str = "label"
    split_column: str | None = None
    train_split: str = "train"
    val_split: str = "test"
    validate: bool = True
    min_duration: float = 0.0
    num_workers: int = 2
    cache: str = "none"
    cache_dir: str | None = None


@dataclass
class AudioConfig:
    """Decoding and cropping: sample rate, training window length (s) and crop policy."""

    sample_rate: int = 32000
    duration: float = 5.0
    eval_crop: str = "start"


@dataclass
class FrontendConfig:
    """Log-mel frontend (see :class:`nfaudio.frontend.LogMel`)."""

    n_fft: int = 2048
    hop_length: int = 512
    win_length: int | None = None
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float | None = 16000.0
    power: float = 2.0
    top_db: float | None = 80.0
    normalize: str = "per_clip"
    mean: float = 0.0
    std: float = 1.0


@dataclass
class AugmentConfig:
    """Training-only augmentation. Probabilities of 0 switch a transform off."""

    gain_p: float = 0.0
    gain_db: float = 6.0
    shift_p: float = 0.0
    noise_p: float = 0.0
    noise_snr: tuple[float, float] = (10.0, 30.0)
    noise_color: str = "pink"
    background_files: list[str] = field(default_factory=list)
    background_p: float = 0.0
    background_snr: tuple[float, float] = (3.0, 20.0)
    mixup_p: float = 0.0
    mixup_alpha: float = 0.5
    mixup_rule: str = "max"
    specaug_p: float = 0.0
    specaug_freq_width: int = 16
    specaug_time_width: int = 32
    specaug_masks: int = 2


@dataclass
class ModelConfigSection:
    """Which network: a name from ``nfaudio list-models`` (or any timm backbone) and its head. ``null`` keeps the
    model variant's own value (the registry row); for a plain timm name that is avg pooling, no dropout, no
    drop-path, the backbone's stem stride and contiguous memory."""

    name: str = "eca_nfnet_l0"
    head: str = "sed"
    pooling: str | None = None
    pretrained: bool | str = False
    weights_dir: str | None = None
    weights_cache: str | None = None
    drop_path_rate: float | None = None
    drop_rate: float | None = None
    stem_stride: int | None = None
    channels_last: bool | None = None


@dataclass
class LossConfig:
    """Loss on clip (and, for SED, max-over-frames) logits."""

    name: str = "bce"
    frame_weight: float = 0.5
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    secondary_weight: float = 0.5
    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    """Optimizer and Adaptive Gradient Clipping. ``agc: null`` means on for NF backbones only."""

    name: str = "sgd"
    lr: float = 0.1
    backbone_lr_mult: float = 1.0
    weight_decay: float = 2e-5
    momentum: float = 0.9
    nesterov: bool = True
    agc: bool | None = None
    agc_clip: float = 0.01
    agc_eps: float = 1e-3
    clip_grad_norm: float | None = None


@dataclass
class ScheduleConfig:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``, stepped per optimizer step."""

    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01


@dataclass
class TrainConfig:
    """The training loop. ``min_steps``: train at least this many optimizer steps, raising ``epochs`` when the
    training set is too small for them to give that many (``null``: ``epochs`` as given)."""

    epochs: int = 10
    min_steps: int | None = None
    batch_size: int = 32
    accum_steps: int = 1
    ema: bool = False
    ema_decay: float = 0.999
    amp: bool = True
    early_stop_patience: int | None = None
    select: str = "best"
    seed: int = 42
    balanced_alpha: float | None = None
    use_rating: bool = False
    freeze_backbone_epochs: int = 0
    device: str = "auto"
    metric: str = "macro_auc"
    val_fold: int = 0
    eval_batch_size: int | None = None
    max_steps_per_epoch: int | None = None
    tensorboard: bool = False
    wandb: bool = False
    progress: bool = True
    threads: int | None = None


@dataclass
class CVConfig:
    """Fold assignment for validation and cross-validation."""

    n_folds: int = 5
    strategy: str = "stratified"
    group_column: str | None = None
    folds: list[int] | None = None


@dataclass
class PseudoConfig:
    """Training on pseudo-labels (:mod:`nfaudio.selftrain.data`): ``labels`` lists pseudo-label folders made by
    ``nfaudio pseudo-label`` (empty: none); ``mode: rows`` adds their windows as training rows of loss weight
    ``weight``; ``mode: mix`` mixes each labelled sample (probability ``mix_p``) with one pseudo-labelled window at
    a weight drawn in ``mix_weight``, targets by ``mix_rule``; ``sample: weight`` draws those windows' files by
    their summed max probability (``uniform``: every window alike). Pseudo-labelled data never enters validation."""

    labels: list[str] = field(default_factory=list)
    mode: str = "mix"
    weight: float = 1.0
    mix_weight: tuple[float, float] = (0.5, 0.5)
    mix_p: float = 1.0
    mix_rule: str = "max"
    sample: str = "weight"


@dataclass
class DistillConfig:
    """Knowledge distillation (:mod:`nfaudio.training.distill`): with a ``teacher`` (a checkpoint, run or CV run;
    null: none) every training batch is also scored by the teacher, and the loss becomes ``(1 - alpha) * hard +
    alpha * T**2 * soft`` with ``soft`` the ``loss`` (bce or kl) to the teacher's probabilities at temperature T."""

    teacher: str | None = None
    loss: str = "bce"
    temperature: float = 1.0
    alpha: float = 0.5


@dataclass
class PredictConfig:
    """Sliding-window prediction over long recordings: every option of ``nfaudio predict`` (flag ``--top-k`` is key
    ``top_k``), whose defaults come from the run's ``config.yaml`` (command-line flags win). ``window: null`` means
    the training duration, ``hop: null`` the window (or ``window - overlap``), ``threads: null`` the thread
    policy's default (:func:`nfaudio.runtime.inference_threads`, every usable core; one per task on a Dask
    cluster), ``decode_timeout: null`` no decoder timeout, ``cluster: null`` this machine (else a Dask cluster spec,
    :func:`nfaudio.cluster.connect`)."""

    window: float | None = None
    hop: float | None = None
    overlap: float | None = None
    batch_size: int = 32
    last: str = "pad"
    tta_shift: float = 0.0
    smoothing: float = 0.0
    backend: str = "torch"
    precision: str = "fp32"
    calibration: list[str] = field(default_factory=list)
    calibration_seconds: float = 300.0
    int8_tolerance: float = 0.1
    int8_warn: bool = False
    device: str = "auto"
    threads: int | None = None
    workers: int = 1
    decode_timeout: float | None = 60.0
    decode_timeout_factor: float = 1.0
    min_duration: float = 0.5
    formats: list[str] = field(default_factory=lambda: ["submission", "table"])
    table_format: str = "csv"
    threshold: float = 0.5
    top_k: int | None = None
    cluster: str | None = None


@dataclass
class Config:
    """The whole recipe."""

    data: DataConfig = field(default_factory=DataConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfigSection = field(default_factory=ModelConfigSection)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), suitable for YAML."""
        return plain(dataclasses.asdict(self))

    @property
    def activation(self) -> str:
        """The output activation the loss implies: "softmax" for ``ce`` (single-label), else "sigmoid"."""
        return "softmax" if self.loss.name == "ce" else "sigmoid"


def from_dict(values: dict[str, Any] | None) -> Config:
    """Build a :class:`Config` from a nested dict, rejecting unknown keys and invalid choices.

    Raises:
        ConfigError: unknown key (named, with its closest match), a value of the wrong type, or a choice key
            (:data:`CHOICES`) whose value is not one of its valid values (named, with the closest one).
    """
    cfg = build(Config, values or {}, "")
    check_choices(cfg)
    return cfg


def check_choices(cfg: Config) -> None:
    """Check every choice key of :data:`CHOICES` (list values item by item).

    Raises:
        ConfigError: naming the key, the value, the closest valid value and all valid values.
    """
    for key, valid in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None:  # an optional key left unset (e.g. model.pooling: the variant's own)
            continue
        for item in value if isinstance(value, list) else [value]:
            if item not in valid:
                close = difflib.get_close_matches(str(item), valid, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ConfigError(f"'{key}' cannot be {item!r}; {hint}valid values: {', '.join(valid)}")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is read as YAML (``0.1``, ``true``, ``[1, 2]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or "." not in key:
        raise ConfigError(f"override '{text}' must name a section and a key, e.g. optim.lr=0.01")
    return key, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``values`` with dotted overrides applied (validated when built)."""
    out = plain(values or {})
    for text in overrides:
        key, value = parse_override(text)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[leaf] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (or defaults when ``path`` is None) and apply dotted overrides.

    ``path`` is a file or the name of a shipped recipe (``fsdd`` or ``fsdd.yaml``; :mod:`nfaudio.recipes`).

    Raises:
        ConfigError: the file is missing, is not YAML, or holds unknown keys / wrong types.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            path = recipe_path(path)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections")
        _resolve_paths(values, path.parent)
    try:
        return from_dict(apply_overrides(values, overrides or []))
    except ConfigError as exc:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"{exc}{where}") from None


def _resolve_paths(values: dict[str, Any], base: Path) -> None:
    """Recipe-relative paths (``./...``, ``../...``) in the :data:`PATH_KEYS` are resolved against ``base``."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(("./", "../")):
            return str((base / value).resolve())
        return value

    for key in PATH_KEYS:
        section_name, name = key.split(".")
        section = values.get(section_name)
        if isinstance(section, dict) and name in section:
            value = section[name]
            section[name] = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
