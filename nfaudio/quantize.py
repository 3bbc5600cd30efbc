"""int8 post-training quantization of the OpenVINO backend's models (NNCF), calibrated on the user's audio, with an
accuracy guard.

``nfaudio predict --backend openvino --precision int8 --calibration CALIB`` scores each checkpoint's body graph
(:func:`nfaudio.export.export_parts`, from the export cache) quantized to int8 by NNCF's post-training
quantization (``nncf.quantize``: per-channel int8 weights, per-tensor int8 activations whose ranges are measured
on calibration data). The log-mel frontend stays fp32 (its DFT products and log are what int8 would hurt most).
The calibration data are the windows of a few minutes of the user's own recordings (``CALIB``: files, folders
or manifests, as for prediction; the first ``calibration_seconds`` of audio, shared evenly between the files).

The guard: after quantizing, the int8 and fp32 bodies score the same calibration windows; the largest absolute
probability difference (``max_abs_diff``) must stay within ``tolerance``, else :class:`Int8AccuracyError` (the
CLI's exit 2) or, with ``warn``, a loud warning and the int8 model anyway. The per-class Spearman rank correlation
of the int8 scores with the fp32 scores (how well int8 keeps each class's ranking of the windows, what AUC-type
metrics see) is reported with it.

The int8 model is cached inside the checkpoint's export-cache entry (:mod:`nfaudio.export_cache`), keyed also by
the calibration set (each file's path, size and mtime), the calibration length and the NNCF / OpenVINO versions::

    <entry>/int8-<key>/  body.xml  body.bin  meta.json (calibration files, max_abs_diff, spearman per class)

built in a temporary folder and renamed into place; a hit reads only ``meta.json`` and re-applies the guard with
the tolerance of this call. Where the entry cannot be written, the int8 model goes to the user cache
(:func:`nfaudio.export_cache.user_cache_dir`). The export cache calls this module (not the other way round).

Speed: int8 pays where the CPU has int8 dot-product instructions (AVX512-VNNI, AMX) and the model is large enough
that convolutions dominate; the README's benchmark rows say what it measured (a small model can get slower).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfaudio.backends import activate, openvino_core, require
from nfaudio.fileio import exclusive_lock, writable_dir

__all__ = ["DEFAULT_SECONDS", "DEFAULT_TOLERANCE", "Int8AccuracyError", "Int8Model", "Int8Options",
           "calibration_windows", "check_guard", "quantized_body", "rank_correlation"]

log = logging.getLogger(__name__)

DEFAULT_SECONDS = 300.0
DEFAULT_TOLERANCE = 0.1
LAYOUT = 1  # bump when the files or the recipe of an int8 entry change
_FILES = ("body.xml", "body.bin", "meta.json")
_BATCH = 16  # calibration windows per forward pass


class Int8AccuracyError(ValueError):
    """The int8 model's scores on the calibration audio differ from fp32 by more than the tolerance."""


@dataclass(frozen=True)
class Int8Options:
    """How to build and check the int8 models (the recipe's ``predict.calibration*`` / ``int8_*`` keys).

    Attributes:
        calibration: audio files, folders or manifests to calibrate on (required for int8).
        seconds: seconds of audio taken from them (shared evenly between the files).
        tolerance: largest allowed absolute probability difference int8 vs fp32 on the calibration windows.
        warn: above the tolerance, warn loudly and use the int8 model instead of refusing.
    """

    calibration: tuple[str, ...] = ()
    seconds: float = DEFAULT_SECONDS
    tolerance: float = DEFAULT_TOLERANCE
    warn: bool = False


@dataclass(frozen=True)
class Int8Model:
    """One cached int8 body: its folder, metadata (incl. the guard's figures) and whether this call built it."""

    folder: Path
    meta: dict[str, Any]
    built: bool

    @property
    def body(self) -> Path:
        """The OpenVINO IR of the int8 body (``spec -> clip, frame, embedding``)."""
        return self.folder / "body.xml"

    @property
    def max_abs_diff(self) -> float:
        return float(self.meta["max_abs_diff"])


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each column of ``a`` with the same column of ``b`` (``(N, C)`` each; ties get
    average ranks): Pearson's correlation of the ranks. A column that is constant in either gives NaN."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (N, C) arrays of one shape, got {a.shape} and {b.shape}")
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(axis=0), rb - rb.mean(axis=0)
    den = np.sqrt((ra * ra).sum(axis=0) * (rb * rb).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=0) / np.where(den > 0, den, 1.0), np.nan)


def calibration_windows(files: Sequence[Path], sample_rate: int, window: float, seconds: float) -> np.ndarray:
    """``(N, T)`` float32 windows (``window`` s at ``sample_rate``, no overlap, the last one zero-padded) from the
    starts of ``files``: ``ceil(seconds / window)`` in all, shared evenly (a file short of its share leaves the
    rest to the next ones). Files that cannot be decoded are skipped with a warning.

    Raises:
        ValueError: no window could be read.
    """
    from nfaudio.audio import AudioError, stream_windows

    wanted = max(1, math.ceil(seconds / window))
    out: list[np.ndarray] = []
    for i, path in enumerate(files):
        share = math.ceil((wanted - len(out)) / (len(files) - i))
        try:
            out += [w for _, _, w in itertools.islice(stream_windows(path, sample_rate, window, window, last="pad"),
                                                      share)]
        except AudioError as err:
            log.warning("calibration: skipping %s: %s", path, err)
    if not out:
        raise ValueError(f"no calibration audio could be read from {len(files)} file(s)")
    return np.stack(out).astype(np.float32, copy=False)


def _version(module: str, extra: str) -> str:
    """An installed package's version without importing it (importing nncf loads torch); ``ImportError`` naming
    the extra when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        require(module, extra)  # raises the ImportError that names the extra
        raise


def _calibration_key(files: Sequence[Path], seconds: float) -> tuple[str, list[dict[str, Any]]]:
    ids = []
    for f in files:
        st = f.stat()
        ids.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    key = {"files": ids, "seconds": float(seconds), "layout": LAYOUT, "nncf": _version("nncf", "int8"),
           "openvino": _version("openvino", "openvino")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16], ids


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES)


def quantized_body(entry: Any, files: Sequence[Path], seconds: float = DEFAULT_SECONDS,
                   threads: int | None = None, fallback: Path | None = None) -> Int8Model:
    """The int8 body of an export-cache entry calibrated on ``files`` (see the module docstring), built when
    missing.

    Args:
        entry: the checkpoint's fp32 graphs, a :class:`nfaudio.export_cache.CachedExport`.
        files: calibration audio files (:func:`nfaudio.inputs.list_audio` of the user's inputs).
        seconds: seconds of calibration audio.
        threads: OpenVINO inference threads while calibrating and checking.
        fallback: where the int8 model goes when ``entry.folder`` is not writable (the export cache passes
            :func:`~nfaudio.export_cache.user_cache_dir` ``/ entry.folder.name``).

    Raises:
        ValueError: no calibration file, or none could be read.
        ImportError: ``nncf`` or ``openvino`` is not installed.
    """
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("int8 needs calibration audio (--calibration FILES/FOLDERS, a few minutes of your data)")
    key, ids = _calibration_key(files, seconds)  # a hit imports neither nncf nor torch
    name = f"int8-{key}"
    fallback = Path(fallback) if fallback is not None else entry.folder
    for folder in (entry.folder / name, fallback / name):
        if _complete(folder):
            return Int8Model(folder, json.loads((folder / "meta.json").read_text()), built=False)
    base = entry.folder if writable_dir(entry.folder) else fallback
    if base != entry.folder:
        log.warning("%s is not writable: caching the int8 model in %s", entry.folder, fallback)
        fallback.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(base / f"{name}.lock"):
        if _complete(base / name):
            return Int8Model(base / name, json.loads((base / name / "meta.json").read_text()), built=False)
        meta = _build(entry, files, ids, seconds, threads, base / name)
    return Int8Model(base / name, meta, built=True)


def _build(entry: Any, files: Sequence[Path], ids: list[dict[str, Any]], seconds: float,
           threads: int | None, dest: Path) -> dict[str, Any]:
    """Calibrate, quantize, compare with fp32 on the calibration windows, and write ``dest`` atomically."""
    nncf = require("nncf", "int8")
    ov = require("openvino", "openvino")

    meta = entry.meta
    waves = calibration_windows(files, int(meta["sample_rate"]), float(meta["duration"]), seconds)
    log.info("quantizing %s to int8 on %d calibration windows (%.0f s of audio)", entry.body, len(waves),
             len(waves) * float(meta["duration"]))
    core = openvino_core()  # one per process (see backends.openvino_core)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    frontend = core.compile_model(str(entry.frontend), "CPU", config)
    specs = [frontend(waves[i:i + _BATCH])[frontend.output("spec")] for i in range(0, len(waves), _BATCH)]
    quantized = nncf.quantize(core.read_model(str(entry.body)), nncf.Dataset(specs), subset_size=len(specs),
                              preset=nncf.QuantizationPreset.PERFORMANCE)
    fp32 = core.compile_model(str(entry.body), "CPU", config)
    int8 = core.compile_model(quantized, "CPU", config)
    activation = meta.get("activation", "sigmoid")
    ref = np.concatenate([activate(fp32(s)[fp32.output("clip")], activation) for s in specs])
    got = np.concatenate([activate(int8(s)[int8.output("clip")], activation) for s in specs])
    diff = np.abs(got - ref)
    rho = rank_correlation(got, ref)
    info = {"calibration": {"files": ids, "seconds": float(seconds), "windows": len(waves)},
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "spearman": [None if np.isnan(r) else round(float(r), 6) for r in rho],
            "spearman_min": None if np.isnan(rho).all() else float(np.nanmin(rho)),
            "classes": list(meta["classes"]), "source": meta.get("source"), "nncf": _version("nncf", "int8"),
            "openvino": _version("openvino", "openvino")}
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    os.chmod(tmp, 0o755)
    try:
        ov.save_model(quantized, str(tmp / "body.xml"), compress_to_fp16=False)
        (tmp / "meta.json").write_text(json.dumps(info, indent=1))
        shutil.rmtree(dest, ignore_errors=True)  # an incomplete entry
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def check_guard(model: Int8Model, tolerance: float, warn: bool = False, name: str = "") -> None:
    """Apply the accuracy guard to ``model`` (see the module docstring) and log its figures.

    Raises:
        Int8AccuracyError: ``max_abs_diff > tolerance`` and not ``warn``.
    """
    m = model.meta
    rho = [r for r in m["spearman"] if r is not None]
    figures = (f"max |int8 - fp32| probability {m['max_abs_diff']:.4f} (mean {m['mean_abs_diff']:.4f}) on "
               f"{m['calibration']['windows']} calibration windows; Spearman rank correlation per class: min "
               f"{min(rho) if rho else float('nan'):.3f}, median {float(np.median(rho)) if rho else float('nan'):.3f}")
    if model.max_abs_diff <= tolerance:
        log.info("int8 %s: %s (tolerance %g)", name, figures, tolerance)
        return
    message = f"int8 {name}: {figures} exceeds the tolerance {tolerance:g}"
    if not warn:
        raise Int8AccuracyError(f"{message}; use fp32, a larger --int8-tolerance, or --int8-warn to score anyway")
    log.warning("!" * 20 + " INT8 ACCURACY WARNING " + "!" * 20)
    log.warning("%s: scoring with the int8 model anyway (--int8-warn)", message)
