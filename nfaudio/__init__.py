"""nfaudio: normalizer-free ResNets (Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
Normalization") for audio classification and sound event detection.

The public API, imported on first use (``import nfaudio`` itself loads neither torch nor any other heavy
dependency)::

    import nfaudio as nfa

    cfg = nfa.load_config("fsdd", ["train.epochs=20"])  # a shipped recipe's name, or a YAML file
    nfa.train(cfg, "runs/fsdd")                       # one split; nfa.cross_validate(cfg, "runs/fsdd_cv") for K folds
    scores = nfa.Predictor.from_checkpoint("runs/fsdd").predict(["recordings/"])
    nfa.export_onnx("runs/fsdd/best.pt", "model.onnx")

The modules follow the data path: ``inputs``/``manifest`` -> ``audio`` -> ``augment`` -> ``frontend`` ->
``models`` -> ``training``/``cv`` -> ``predict`` (``backends``, ``predict_run``, ``formats``) and ``export``;
``config``, ``rundir`` and ``runtime`` are the leaves they share.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute in it)
_API: dict[str, tuple[str, str]] = {
    # recipes and run directories
    "Config": ("nfaudio.config", "Config"),
    "ConfigError": ("nfaudio.config", "ConfigError"),
    "load_config": ("nfaudio.config", "load_config"),
    "RunDir": ("nfaudio.rundir", "RunDir"),
    # audio and data
    "AudioError": ("nfaudio.audio", "AudioError"),
    "load_audio": ("nfaudio.audio", "load"),
    "list_audio": ("nfaudio.inputs", "list_audio"),
    "load_manifest": ("nfaudio.manifest", "load_manifest"),
    "Manifest": ("nfaudio.manifest", "Manifest"),
    "AudioDataset": ("nfaudio.data", "AudioDataset"),
    "LogMel": ("nfaudio.frontend", "LogMel"),
    "SpecAugment": ("nfaudio.frontend", "SpecAugment"),
    # models
    "create_model": ("nfaudio.models", "create_model"),
    "list_models": ("nfaudio.models", "list_models"),
    "load_model": ("nfaudio.models", "load_model"),
    "load_checkpoint": ("nfaudio.models", "load_checkpoint"),
    "save_model": ("nfaudio.models", "save_model"),
    "AudioClassifier": ("nfaudio.models", "AudioClassifier"),
    "AGC": ("nfaudio.agc", "AGC"),
    # training and evaluation
    "train": ("nfaudio.training", "train_from_config"),
    "fit": ("nfaudio.training", "fit"),
    "cross_validate": ("nfaudio.cv", "run_cv"),
    "score_submission": ("nfaudio.metrics", "score_submission"),
    # prediction and export
    "Predictor": ("nfaudio.predict", "Predictor"),
    "run_prediction": ("nfaudio.predict_run", "run_prediction"),
    "export_onnx": ("nfaudio.export", "export_onnx"),
    # embeddings
    "run_embedding": ("nfaudio.embed.run", "run_embedding"),
    "embed_query": ("nfaudio.embed.query", "embed_query"),
    "open_store": ("nfaudio.embed.store", "open_store"),
    # data for trying it out
    "generate_dataset": ("nfaudio.synth", "generate_dataset"),
    "run_demo": ("nfaudio.demo", "run_demo"),
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'nfaudio' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
