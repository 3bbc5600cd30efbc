"""Compiled OpenVINO models kept on disk, so that a warm ``nfaudio predict --backend openvino`` skips compilation.

Compiling an ONNX or IR graph for the CPU costs about a second per model for an ``eca_nfnet_l0`` (more for an
int8 graph), paid by every run for every fold of an ensemble. :func:`compile_cached` compiles once, writes the
compiled model (``CompiledModel.export_model``) next to the graph, and the next run imports it instead
(``Core.import_model``, about a tenth of the time). A blob is written to a temporary file and renamed into place
(complete or absent), so concurrent readers never see half of one; a blob that fails to import (another OpenVINO
build, a damaged file) is compiled again and replaced, with a log line.

The blob's name carries a key of everything that shapes the compiled model: the graph file (name, size and
modification time; graphs of the export cache never change in place), the OpenVINO version, the device, the
compile settings (precision hint, threads) and the CPU's instruction-set flags, so a cache shared over NFS by
nodes of different CPUs keeps one blob per kind of node. Blobs of the same graph under other keys are removed
when a new one is written (one blob per graph, however the settings alternate).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from nfaudio.fileio import atomic_open

__all__ = ["BLOB_DIR_NAME", "blob_path", "compile_cached", "cpu_signature"]

log = logging.getLogger(__name__)

BLOB_DIR_NAME = "openvino"


@functools.lru_cache(maxsize=1)
def cpu_signature() -> str:
    """The CPU's instruction-set flags (``/proc/cpuinfo``), else the platform's processor name; read once per
    process (every graph of an ensemble asks, and a many-core node's cpuinfo is large)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def blob_path(graph: str | os.PathLike, device: str, config: dict[str, Any], version: str,
              folder: str | os.PathLike | None = None) -> Path:
    """Where the compiled form of ``graph`` for ``device``/``config`` goes: ``<graph dir>/openvino/<stem>-<key>.blob``
    (or under ``folder``)."""
    graph = Path(graph)
    files = [graph] + ([graph.with_suffix(".bin")] if graph.suffix == ".xml" else [])
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    key = json.dumps({"graph": stats, "device": device, "config": {k: str(v) for k, v in sorted(config.items())},
                      "openvino": version, "cpu": cpu_signature()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(folder if folder is not None else graph.parent / BLOB_DIR_NAME) / f"{graph.stem}-{digest}.blob"


def compile_cached(core: Any, graph: str | os.PathLike, device: str, config: dict[str, Any],
                   folder: str | os.PathLike | None = None) -> Any:
    """``core.compile_model(graph, device, config)``, imported from its blob when there is one (see the module
    docstring), else compiled and its blob written (skipped, with a log line, where the folder is not writable)."""
    import openvino

    blob = blob_path(graph, device, config, openvino.__version__, folder)
    if blob.is_file():
        try:
            return core.import_model(blob.read_bytes(), device, config)
        except (RuntimeError, OSError) as exc:  # another build's blob, a damaged file: compile again
            log.warning("%s: cannot import the compiled model (%s); compiling %s again", blob, exc, graph)
    compiled = core.compile_model(str(graph), device, config)
    try:
        with atomic_open(blob, "wb") as fh:  # a unique temporary per writer: cluster workers may write one blob
            data = compiled.export_model()  # bytes, or a BytesIO in newer OpenVINO
            fh.write(data.getvalue() if hasattr(data, "getvalue") else data)
        for old in blob.parent.glob(f"{Path(graph).stem}-*.blob"):
            if old != blob and len(old.stem) == len(blob.stem):
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.info("not keeping the compiled model of %s (%s)", graph, exc)
    return compiled
