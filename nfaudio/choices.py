"""The valid values of every choice key of a recipe, in one place: the modules that implement a choice import
its values from here, and :func:`nfaudio.config.check_choices` checks a config against :data:`CHOICES` when it is
built, so a typo fails before any data is read. No imports: cheap for the CLI to load.
"""

from __future__ import annotations

__all__ = ["BACKENDS", "CACHE_MODES", "CHOICES", "CROPS",
           "DATA_KINDS", "FOLD_STRATEGIES", "FORMATS", "HEADS", "LAST_POLICIES",
           "LOSSES", "METRIC_NAMES", "MIXUP_RULES", "NOISE_COLORS", "NORMALIZE", "OPTIMIZERS", "PATH_KEYS",
           "POOLINGS", "PRECISIONS", "PSEUDO_MODES", "PSEUDO_SAMPLING", "SELECT", "TABLE_FORMATS",
           "DISTILL_LOSSES", "FOLD_MODES"]

DATA_KINDS = ("auto", "birdclef", "folder", "csv")
CROPS = ("random", "start", "center")
CACHE_MODES = ("none", "memory", "disk")
NORMALIZE = ("none", "per_clip", "fixed")
NOISE_COLORS = ("white", "pink")
MIXUP_RULES = ("weighted", "max")
HEADS = ("sed", "pooled")
POOLINGS = ("avg", "max", "avgmax", "gem")
LOSSES = ("bce", "focal", "ce")
OPTIMIZERS = ("sgd", "adamw")
SELECT = ("best", "last")
METRIC_NAMES = ("padded_cmap", "macro_auc", "map", "accuracy", "row_wise_micro_f1")
FOLD_STRATEGIES = ("stratified", "group", "logo", "predefined")
LAST_POLICIES = ("pad", "drop", "shift")
BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
FORMATS = ("submission", "table", "detections", "raven", "audacity", "kaleidoscope")
TABLE_FORMATS = ("csv", "parquet")
PSEUDO_MODES = ("rows", "mix")
PSEUDO_SAMPLING = ("uniform", "weight")
DISTILL_LOSSES = ("bce", "kl")
FOLD_MODES = ("mean", "concat")  # how an ensemble's (a CV run's) window embeddings are combined

CHOICES: dict[str, tuple[str, ...]] = {
    "data.kind": DATA_KINDS, "data.cache": CACHE_MODES, "audio.eval_crop": CROPS, "frontend.normalize": NORMALIZE,
    "augment.noise_color": NOISE_COLORS, "augment.mixup_rule": MIXUP_RULES, "model.head": HEADS,
    "model.pooling": POOLINGS, "loss.name": LOSSES, "optim.name": OPTIMIZERS, "train.select": SELECT,
    "train.metric": METRIC_NAMES, "cv.strategy": FOLD_STRATEGIES, "predict.last": LAST_POLICIES,
    "predict.backend": BACKENDS, "predict.precision": PRECISIONS, "predict.formats": FORMATS,
    "predict.table_format": TABLE_FORMATS, "pseudo.mode": PSEUDO_MODES, "pseudo.sample": PSEUDO_SAMPLING,
    "pseudo.mix_rule": MIXUP_RULES, "distill.loss": DISTILL_LOSSES,
}
# Keys holding file paths: a value starting with ./ or ../ is resolved against the recipe's folder.
PATH_KEYS = ("data.root", "data.manifest", "data.cache_dir", "model.pretrained", "model.weights_dir",
             "model.weights_cache", "augment.background_files", "pseudo.labels", "distill.teacher",
             "predict.calibration")
