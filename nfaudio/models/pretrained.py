"""ImageNet weights for one-channel (spectrogram) backbones: from timm's hub, or from a local file.

Adapting the RGB stem to one channel follows timm's own rule
(:func:`timm.models._manipulate.adapt_input_conv`): the three input-channel kernels of the first conv
are summed, so a grey image (R = G = B = x) gives the same stem output as before. The ImageNet
classifier is dropped (its name comes from the model's ``pretrained_cfg["classifier"]``); every other
tensor must fit the architecture exactly.

Offline machines: downloading never hangs. ``pretrained=True`` looks, in order, in a folder of weight files named
by model (``weights_dir``, else ``$NFAUDIO_WEIGHTS_DIR``: ``<model>.safetensors|.pth|.pt|.bin`` or ``<model>/``
holding a Hugging Face download), then in a Hugging Face cache in the hub's own layout (``weights_cache``, else
``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default) and torch hub's cache, and only then
downloads. ``HF_HUB_OFFLINE=1`` (or an unreachable hub, probed with a short socket timeout) raises
:class:`PretrainedWeightsError` at once when none of them has the weights, naming every place looked in.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = [
    "PretrainedWeightsError", "create_pretrained_timm", "first_conv_names", "hub_cache_dir", "load_backbone_weights",
    "read_state_dict", "weights_in_dir",
]

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}
_STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP wrappers, torch.compile
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # a `hf download timm/<model> --local-dir DIR/<model>`


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are unavailable (offline, none published) or do not fit the architecture."""


def _offline() -> bool:
    import huggingface_hub.constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    return env or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _reachable(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the URL's host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_cache_dir(weights_cache: str | os.PathLike | None = None) -> str | None:
    """The Hugging Face hub cache to read: ``weights_cache``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``; ``None``
    leaves huggingface_hub's default (read now, not when huggingface_hub was imported)."""
    if weights_cache:
        return os.fspath(weights_cache)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _model_names(name: str) -> list[str]:
    """The names a weight file of ``name`` may carry: as given, without its tag, timm's hub repo name with tag."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    names = [name, split_model_name_tag(name)[0]]
    try:
        pcfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm: an unknown tag
        pcfg = None
    if pcfg is not None and pcfg.hf_hub_id:
        names.append(pcfg.hf_hub_id.split("@")[0].rsplit("/", 1)[-1])
    return list(dict.fromkeys(names))


def weights_in_dir(name: str, weights_dir: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The weight file of model ``name`` in a folder of files named by model (``weights_dir``, else
    ``$NFAUDIO_WEIGHTS_DIR``): ``<name>.safetensors|.pth|.pt|.bin`` or ``<name>/model.safetensors|pytorch_model.bin``,
    ``<name>`` being the name as given, without its pretrained tag, or timm's hub repo name.

    Returns:
        ``(path or None, what was looked for)``; ``(None, "")`` when no folder is set.

    Raises:
        PretrainedWeightsError: the folder given does not exist.
    """
    folder = weights_dir or os.environ.get("NFAUDIO_WEIGHTS_DIR")
    if not folder:
        return None, ""
    folder = Path(folder)
    if not folder.is_dir():
        raise PretrainedWeightsError(f"weights folder not found: {folder} (model.weights_dir / NFAUDIO_WEIGHTS_DIR)")
    names = _model_names(name)
    for stem in names:
        for path in [folder / (stem + suffix) for suffix in WEIGHT_SUFFIXES] + [folder / stem / f for f in _HF_FILES]:
            if path.is_file():
                return path, ""
    looked = (f"weights folder {folder} has no {'|'.join(names)}{{{','.join(WEIGHT_SUFFIXES)}}} "
              f"(nor <name>/{'|'.join(_HF_FILES)})")
    return None, looked


def _cached_weights(pcfg: Any, cache_dir: str | None = None) -> str | None:
    """Path of the model's weight file in the local Hugging Face (``cache_dir`` or the default) or torch-hub cache."""
    if pcfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        from timm.models._hub import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, hf_split

        repo_id, revision = hf_split(pcfg.hf_hub_id)
        for filename in (pcfg.hf_hub_filename,) if pcfg.hf_hub_filename else (HF_SAFE_WEIGHTS_NAME,
                                                                               HF_WEIGHTS_NAME):
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
            if isinstance(found, str):
                return found
    if pcfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(pcfg.url).path)
        if path.is_file():
            return str(path)
    return None


def _where_looked(pcfg: Any, cache_dir: str | None, looked: str) -> str:
    import huggingface_hub.constants

    parts = [looked] if looked else []
    if pcfg.hf_hub_id:
        parts.append(f"Hugging Face cache {cache_dir or huggingface_hub.constants.HF_HUB_CACHE} has no "
                     f"{pcfg.hf_hub_id} ({pcfg.hf_hub_filename or ', '.join(_HF_FILES)})")
    return "; ".join(parts)


def _how_to_pass_a_file(name: str, pcfg: Any) -> str:
    source = f"the Hugging Face repo {pcfg.hf_hub_id}" if pcfg.hf_hub_id else (pcfg.url or "timm")
    return (f"download the weights of {name!r} elsewhere (from {source}) and pass "
            f"pretrained='/path/to/weights.safetensors' (or .pth/.pt/.bin), put them in a weights folder as "
            f"{name}.safetensors (model.weights_dir / NFAUDIO_WEIGHTS_DIR) or in a Hugging Face cache "
            "(model.weights_cache / HF_HUB_CACHE / HF_HOME); use pretrained=False for random initialisation")


def create_pretrained_timm(name: str, weights_cache: str | os.PathLike | None = None, looked: str = "",
                           **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)`` that fails fast and clearly when offline.

    Weights already in the local cache are loaded from there without touching the network (timm's
    loader still adapts the stem to ``in_chans`` and drops the classifier).

    Args:
        name: timm model name, optionally with a pretrained tag.
        weights_cache: the Hugging Face hub cache (see :func:`hub_cache_dir`).
        looked: where else the weights were looked for (a weights folder), for the error message.
        **kwargs: passed to ``timm.create_model`` (``in_chans``, ``num_classes``, ...).

    Returns:
        The timm model with ImageNet weights.

    Raises:
        PretrainedWeightsError: no published weights, offline and not cached, hub unreachable, or the
            download failed.
    """
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    pcfg = get_pretrained_cfg(name)
    if pcfg is None or not (pcfg.hf_hub_id or pcfg.url or pcfg.file):
        with_weights = timm.list_models(split_model_name_tag(name)[0], pretrained=True)
        raise PretrainedWeightsError(
            f"timm publishes no ImageNet weights for {name!r}" +
            (f" (tags with weights: {', '.join(with_weights)})" if with_weights else "") +
            "; pass pretrained=False, or pretrained='/path/to/weights' for your own file")
    cache_dir = hub_cache_dir(weights_cache)
    cached = pcfg.file or _cached_weights(pcfg, cache_dir)
    if cached:
        log.info("loading ImageNet weights of %s from %s", name, cached)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=cached), **kwargs)
    if _offline():
        raise PretrainedWeightsError(
            f"HF_HUB_OFFLINE is set and the ImageNet weights of {name!r} are not here "
            f"({_where_looked(pcfg, cache_dir, looked)}); " + _how_to_pass_a_file(name, pcfg))
    if pcfg.hf_hub_id:
        import huggingface_hub.constants

        endpoint = huggingface_hub.constants.ENDPOINT
    else:
        endpoint = pcfg.url
    if not _reachable(endpoint):
        raise PretrainedWeightsError(
            f"cannot reach {endpoint} to download the ImageNet weights of {name!r} (no network?); "
            + _how_to_pass_a_file(name, pcfg))
    try:
        return timm.create_model(name, pretrained=True, cache_dir=cache_dir, **kwargs)
    except (OSError, RuntimeError) as err:  # hub/HTTP errors are OSError subclasses
        raise PretrainedWeightsError(
            f"downloading the ImageNet weights of {name!r} failed ({err}); " + _how_to_pass_a_file(name, pcfg)
        ) from err


def read_state_dict(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a plain state dict from ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin``.

    A checkpoint dict is unwrapped from its ``state_dict``, ``model``, ``state_dict_ema`` or ``model_ema``
    entry (EMA first when ``use_ema``), and ``module.`` / ``_orig_mod.`` prefixes are stripped. Files
    are read with ``torch.load(weights_only=True)`` (``argparse.Namespace``, as in timm training
    checkpoints, is allowed too).

    Raises:
        PretrainedWeightsError: missing file, unreadable file, or no tensors found.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise PretrainedWeightsError(f"cannot read weights from {path}: {err}") from err
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise PretrainedWeightsError(f"cannot read weights from {path}: {err}") from err
    if isinstance(obj, dict) and "config" in obj and "nfaudio_version" in obj:
        raise PretrainedWeightsError(f"{path} is an nfaudio checkpoint; load it with nfaudio.models.load_model")
    if isinstance(obj, dict):
        keys = ("state_dict_ema", "model_ema", "state_dict", "model") if use_ema else _STATE_DICT_KEYS
        for key in keys:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path} holds no state dict (a dict of tensors)")
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _names(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def first_conv_names(model: nn.Module) -> tuple[str, ...]:
    """Module names of a timm model's first conv(s) from its metadata; ``()`` when it has none.

    Reads timm's ``get_model_traits(model)["first_conv"]``, else ``model.pretrained_cfg["first_conv"]``.
    """
    from timm.models._input import get_model_traits

    pcfg = getattr(model, "pretrained_cfg", None) or {}
    return _names(get_model_traits(model).get("first_conv", pcfg.get("first_conv")))


def _listing(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, use_ema: bool = False) -> dict[str, list]:
    """Load (ImageNet) weights from a file into a timm backbone built with ``num_classes=0``.

    The first conv (``pretrained_cfg["first_conv"]``) is adapted to the model's input channels with
    timm's ``adapt_input_conv`` (one channel: RGB kernels summed); the classifier
    (``pretrained_cfg["classifier"]``) is dropped; everything else is loaded strictly.

    Args:
        model: the timm model (e.g. ``AudioClassifier.backbone.model``).
        path: weights file (see :func:`read_state_dict`).
        use_ema: prefer the EMA weights of a training checkpoint.

    Returns:
        A report ``{"adapted": [...], "dropped": [...]}`` of tensor names (also logged).

    Raises:
        PretrainedWeightsError: unreadable file, or tensors missing / unexpected / of the wrong shape
            (the message names them).
    """
    from timm.models._manipulate import adapt_input_conv

    state = read_state_dict(path, use_ema=use_ema)
    target = model.state_dict()
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    base_chans = (pcfg.get("input_size") or (3,))[0]
    adapted = []
    for conv in first_conv_names(model):
        key = conv + ".weight"
        if key in state and key in target and state[key].shape != target[key].shape:
            in_chans = target[key].shape[1] * model.get_submodule(conv).groups
            try:
                state[key] = adapt_input_conv(in_chans, state[key], base_chans=base_chans).to(state[key].dtype)
            except (NotImplementedError, AssertionError, ValueError) as err:
                raise PretrainedWeightsError(f"{path}: cannot adapt {key} {tuple(state[key].shape)}: {err}") from err
            adapted.append(key)
    dropped = []
    for clf in _names(pcfg.get("classifier")):
        for key in (clf + ".weight", clf + ".bias"):
            if key in state and key not in target:
                dropped.append(key)
                del state[key]
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_listing(unexpected)}")
        if wrong:
            parts.append("shape mismatch: " + _listing(
                [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in wrong]))
        arch = pcfg.get("architecture", type(model).__name__)
        raise PretrainedWeightsError(f"{path} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    log.info("loaded %d tensors from %s (stem adapted: %s; classifier dropped: %s)", len(state), path,
             adapted or "none", dropped or "none")
    return {"adapted": adapted, "dropped": dropped}
