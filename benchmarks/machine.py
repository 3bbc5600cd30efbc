"""The machine and the versions a benchmark records beside its figures: one rule for every script here.

    from machine import machine_info  # a script in benchmarks/ (its folder is on sys.path when it runs)
    info = machine_info("torch", "onnxruntime", "openvino")  # a package that is not installed records None
"""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def package_versions(*names: str) -> dict[str, str | None]:
    """``__version__`` of each named package, None for one that is not installed (imports it)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", None)
        except ImportError:
            versions[name] = None
    return versions


def machine_info(*packages: str) -> dict:
    """Platform, Python, CPU model, logical and usable CPUs (:func:`nfaudio.runtime.usable_cores`, the count the
    thread policy works from), memory, and the versions of ``packages``."""
    from nfaudio.runtime import usable_cores

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(), "usable_cpus": usable_cores(),
            "memory_gib": round(mem, 1) if mem else None, **package_versions(*packages)}
