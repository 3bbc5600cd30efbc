"""The export cache: ONNX graphs of a checkpoint, built once and kept next to it for the onnxruntime and OpenVINO
backends.

``nfaudio predict --backend onnxruntime|openvino`` on a ``.pt`` file, a run or a CV run needs each checkpoint as
ONNX. Exporting costs seconds per model (and imports torch and timm), so the graphs of :func:`nfaudio.export.
export_parts` (frontend and body) are kept in an entry of the cache, a folder next to the checkpoint::

    <checkpoint dir>/.nfaudio-export/<stem>-<sha256 of the checkpoint's bytes>-<settings>/
        frontend.onnx   body.onnx   meta.json (classes, sample rate, window, frontend, source, settings)

The key is the checkpoint's content, so an entry is reused by the next run and a changed checkpoint (a new
``best.pt``) gets a new entry; the entries of older contents of the same file are removed then. ``<settings>`` is
a short hash of what else shapes the graphs (opset, frontend graph, nfaudio and torch versions, cache layout).
An entry is built in a temporary folder and renamed into place (complete or absent, never half written), under a
lock file so that two processes wanting the same entry build it once (where ``fcntl`` exists; elsewhere both
build and the first rename wins). Where the checkpoint's folder cannot be written (read-only media), the entry
goes to the user cache (``$NFAUDIO_CACHE_DIR``, else ``$XDG_CACHE_HOME/nfaudio/export``, else
``~/.cache/nfaudio/export``) and a log line says so. A hit reads only ``meta.json``: it imports neither torch nor
onnx.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nfaudio
from nfaudio.backends import OnnxScorer, OpenVinoScorer, Scorer, require
from nfaudio.fileio import exclusive_lock, writable_dir
from nfaudio.quantize import Int8Options, check_guard, quantized_body

__all__ = ["CACHE_DIR_NAME", "OPSET", "CachedExport", "Int8Options", "cached_export", "checkpoint_digest",
           "load_runtime_scorer", "user_cache_dir"]

log = logging.getLogger(__name__)

CACHE_DIR_NAME = ".nfaudio-export"
OPSET = 17  # = nfaudio.export.OPSET (not imported from there: that module loads torch)
LAYOUT = 3  # bump when the files of an entry change (3: constant conv weights)
_META = "meta.json"
_FILES = ("frontend.onnx", "body.onnx", _META)


@dataclass(frozen=True)
class CachedExport:
    """One cache entry: the two graphs, their metadata, and whether this call built it."""

    folder: Path
    meta: dict[str, Any]
    built: bool

    @property
    def frontend(self) -> Path:
        """``wave -> spec`` graph."""
        return self.folder / "frontend.onnx"

    @property
    def body(self) -> Path:
        """``spec -> clip, frame`` graph."""
        return self.folder / "body.onnx"


def checkpoint_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def user_cache_dir() -> Path:
    """Where entries go when a checkpoint's folder is read-only: ``$NFAUDIO_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/nfaudio/export``, else ``~/.cache/nfaudio/export``."""
    if os.environ.get("NFAUDIO_CACHE_DIR"):
        return Path(os.environ["NFAUDIO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nfaudio" / "export"


def _settings(opset: int, fast_frontend: bool) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = None
    return {"layout": LAYOUT, "opset": int(opset), "fast_frontend": bool(fast_frontend),
            "nfaudio": nfaudio.__version__, "torch": torch_version}


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES)


def cached_export(checkpoint: str | os.PathLike, *, opset: int | None = None,
                  fast_frontend: bool = True) -> CachedExport:
    """The cache entry of ``checkpoint`` (see the module docstring), built when missing or stale.

    Args:
        checkpoint: a :func:`~nfaudio.models.save_model` file.
        opset: ONNX opset (default :data:`OPSET`).
        fast_frontend: export the matmul DFT frontend where it matches (see :func:`nfaudio.export.export_onnx`).

    Returns:
        The entry; ``built`` tells whether this call exported it.

    Raises:
        FileNotFoundError: no such checkpoint.
        ImportError: a miss needs ``onnx`` (and torch) to export.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    settings = _settings(OPSET if opset is None else opset, fast_frontend)
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    name = f"{checkpoint.stem}-{checkpoint_digest(checkpoint)}-{tag}"
    primary, fallback = checkpoint.resolve().parent / CACHE_DIR_NAME, user_cache_dir()
    for base in (primary, fallback):
        if _complete(base / name):
            return CachedExport(base / name, json.loads((base / name / _META).read_text()), built=False)
    base = primary
    if not writable_dir(primary):
        base = fallback
        log.warning("%s is not writable: caching the ONNX export of %s in %s", primary.parent, checkpoint, base)
        base.mkdir(parents=True, exist_ok=True)
    entry = base / name
    with exclusive_lock(base / f"{name}.lock"):
        if _complete(entry):  # another process built it while we waited
            return CachedExport(entry, json.loads((entry / _META).read_text()), built=False)
        meta = _build(checkpoint, entry, settings)
        _prune(base, checkpoint, keep=name)
    return CachedExport(entry, meta, built=True)


def _build(checkpoint: Path, entry: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Export into a temporary folder next to ``entry``, then rename it into place."""
    from nfaudio.export import export_parts

    log.info("exporting %s to ONNX (cached in %s)", checkpoint, entry.parent)
    shutil.rmtree(entry, ignore_errors=True)  # an incomplete entry (files deleted by hand)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.tmp-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the entry is as readable as the checkpoint
    try:
        meta = export_parts(checkpoint, tmp, opset=settings["opset"], fast_frontend=settings["fast_frontend"])
        meta = {**meta, "source": str(checkpoint.resolve()), "settings": settings}
        (tmp / _META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.rename(tmp, entry)
        except OSError:  # another builder's rename won (no fcntl): its entry is the same
            if not _complete(entry):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _prune(base: Path, checkpoint: Path, keep: str) -> None:
    """Remove the entries (and lock files) of older contents of ``checkpoint`` from ``base``."""
    source = str(checkpoint.resolve())
    for other in base.glob(f"{checkpoint.stem}-*"):
        if other.name in (keep, f"{keep}.lock") or not other.is_dir():
            continue
        try:
            stale = json.loads((other / _META).read_text()).get("source") == source
        except (OSError, ValueError):
            continue
        if stale:
            log.info("removing the stale ONNX export %s", other)
            shutil.rmtree(other, ignore_errors=True)
            (base / f"{other.name}.lock").unlink(missing_ok=True)


def load_runtime_scorer(paths: Sequence[str | os.PathLike], backend: str, device: str = "cpu",
                        threads: int | None = None, precision: str = "fp32", share_frontend: bool = True,
                        int8: Int8Options | None = None) -> tuple[Scorer, list[dict[str, Any]]]:
    """An :class:`OnnxScorer`/:class:`OpenVinoScorer` over ``.onnx`` files (whole models) or checkpoints (their
    frontend and body graphs from the export cache, :func:`nfaudio.export_cache.cached_export`, built on first
    use), plus each model's metadata. Checkpoints with the same frontend (settings and buffers) share one
    frontend graph unless ``share_frontend`` is False. With ``precision="int8"`` (openvino, checkpoints only) each
    body is the int8 model of :func:`nfaudio.quantize.quantized_body`, calibrated on ``int8.calibration`` and
    checked by its accuracy guard (:func:`nfaudio.quantize.check_guard`).

    Raises:
        ValueError: unknown backend, a precision other than fp32 for onnxruntime, int8 without calibration audio
            or for ``.onnx`` files.
        nfaudio.quantize.Int8AccuracyError: the int8 guard refused a model.
        ImportError: the runtime (or, for int8, ``nncf``) is not installed.
    """
    if precision != "fp32" and backend != "openvino":
        raise ValueError(f"precision {precision!r} needs the openvino backend")
    runtimes = {"onnxruntime": OnnxScorer, "openvino": OpenVinoScorer}
    if backend not in runtimes:
        raise ValueError(f"backend must be one of {sorted(runtimes)}, got {backend!r}")
    require("onnxruntime" if backend == "onnxruntime" else "openvino", "onnx" if backend == "onnxruntime"
             else "openvino")
    calibration = _calibration_files(paths, int8) if precision == "int8" else []
    files, frontends, metas = [], [], []
    shared: dict[str, str] = {}  # frontend digest -> the frontend graph of its first member
    for p in map(Path, paths):
        if p.suffix == ".onnx":
            from nfaudio.export import read_onnx_metadata

            files.append(p)
            frontends.append(None)
            metas.append(read_onnx_metadata(p))
            continue
        entry = cached_export(p)
        frontend = str(entry.frontend)
        if share_frontend:
            frontend = shared.setdefault(entry.meta["frontend_sha256"], frontend)
        if calibration:
            model = quantized_body(entry, calibration, int8.seconds, threads, user_cache_dir() / entry.folder.name)
            check_guard(model, int8.tolerance, int8.warn, name=str(p))
            files.append(model.body)
        else:
            files.append(entry.body)
        frontends.append(frontend)
        metas.append(entry.meta)
    # compiled OpenVINO graphs are kept beside the cache's graphs, never beside a user's .onnx files
    extra = {"precision": precision, "cache_blobs": not any(Path(p).suffix == ".onnx" for p in paths)
             } if backend == "openvino" else {}
    scorer = runtimes[backend](files, metas[0].get("activation", "sigmoid"), metas[0]["sample_rate"], device,
                               threads, frontends=frontends, **extra)
    return scorer, metas


def _calibration_files(paths: Sequence[str | os.PathLike], int8: Int8Options | None) -> list[Path]:
    """The calibration audio of an int8 run (checked: checkpoints only, some audio given)."""
    onnx = [p for p in paths if Path(p).suffix == ".onnx"]
    if onnx:
        raise ValueError(f"{onnx[0]}: int8 quantizes checkpoints (.pt) only; give the checkpoint, not its ONNX file")
    if int8 is None or not int8.calibration:
        raise ValueError("precision int8 needs calibration audio: --calibration FILES/FOLDERS (a few minutes of "
                         "recordings like those to score)")
    from nfaudio.inputs import list_audio

    files = list_audio(int8.calibration)
    if not files:
        raise ValueError(f"no audio file in the calibration inputs {list(int8.calibration)}")
    return files
