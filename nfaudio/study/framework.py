"""The study grid: cells keyed by their parameters, each result appended atomically, resumable per cell.

A study lists its cells (dicts of parameters, JSON-serialisable) and a function that measures one cell. Each
finished cell is appended to ``OUT/results.json`` (the list of rows) and ``OUT/results.csv`` at once (written
atomically), with the seed, the machine and the library versions; a re-run skips every cell whose key is
already there (unless it failed), so a killed study continues where it stopped and finished cells are never redone.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nfaudio.fileio import write_json, write_text

__all__ = ["Study", "cell_key", "environment", "markdown_table"]

log = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"


def cell_key(params: dict[str, Any]) -> str:
    """A cell's identity: its parameters as sorted JSON."""
    return json.dumps(params, sort_keys=True, default=str)


def environment() -> dict[str, Any]:
    """Machine and versions recorded with every cell."""
    import numpy
    import torch

    from nfaudio import __version__

    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, {device})",
            "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "timm": timm_version, "nfaudio": __version__}


class Study:
    """A grid of cells measured one at a time into ``out``.

    Args:
        name: the study's name (``bn-cost``, ``agc``, ...), recorded in every row.
        out: the study directory (created).
        seed: recorded in every row (the cell function uses it).
    """

    def __init__(self, name: str, out: str | os.PathLike, seed: int = 0) -> None:
        self.name, self.out, self.seed = name, Path(out), seed
        self.out.mkdir(parents=True, exist_ok=True)
        self._env: dict[str, Any] | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every finished cell's row (``results.json``)."""
        path = self.out / RESULTS_JSON
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []

    def done(self) -> set[str]:
        """Keys of the finished cells (a cell whose measurement failed, ``status: failed``, is tried again)."""
        return {row["cell"] for row in self.rows if row.get("status") != "failed"}

    def run(self, cells: Iterable[dict[str, Any]], measure: Callable[[dict[str, Any]], dict[str, Any]]
            ) -> list[dict[str, Any]]:
        """Measure every cell not yet in ``results.json``, appending each result as soon as it is known.

        Returns:
            All rows (earlier runs' and this run's), in the order the cells were listed.
        """
        cells = list(cells)
        done = self.done()
        todo = [c for c in cells if cell_key(c) not in done]
        if len(todo) < len(cells):
            log.info("%s: %d of %d cells already done in %s", self.name, len(cells) - len(todo), len(cells),
                     self.out)
        for i, params in enumerate(todo):
            log.info("%s: cell %d/%d %s", self.name, i + 1, len(todo), cell_key(params))
            t0 = time.perf_counter()
            result = measure(params)
            self._append({"study": self.name, "cell": cell_key(params), **params, **result, "seed": self.seed,
                          "cell_seconds": round(time.perf_counter() - t0, 3), **self._environment()})
        order = {cell_key(c): i for i, c in enumerate(cells)}
        return sorted((r for r in self.rows if r["cell"] in order), key=lambda r: order[r["cell"]])

    def _environment(self) -> dict[str, Any]:
        if self._env is None:
            self._env = environment()
        return self._env

    def _append(self, row: dict[str, Any]) -> None:
        import pandas as pd

        rows = [r for r in self.rows if r["cell"] != row["cell"]] + [row]  # a retried cell replaces its failure
        write_json(self.out / RESULTS_JSON, rows, indent=1, default=str)  # the source of truth, then the table
        write_text(self.out / RESULTS_CSV, pd.DataFrame(rows).to_csv(index=False))

    def write_report(self, title: str, sections: list[tuple[str, str]]) -> Path:
        """``report.md``: a title, the machine and versions, then (heading, markdown) sections."""
        env = self._environment()
        lines = [f"# {title}", "", f"Machine: {env['machine']}; torch {env['torch']}, timm {env['timm']}, "
                 f"nfaudio {env['nfaudio']}; seed {self.seed}. Results: `{RESULTS_CSV}`, `{RESULTS_JSON}`.", ""]
        for heading, body in sections:
            lines += [f"## {heading}", "", body.rstrip(), ""]
        path = self.out / "report.md"
        write_text(path, "\n".join(lines))
        return path


def markdown_table(rows: list[dict[str, Any]], columns: list[str], digits: int = 4) -> str:
    """A markdown table of ``columns`` of ``rows`` (floats to ``digits`` significant digits)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)
