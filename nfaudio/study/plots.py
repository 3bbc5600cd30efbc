"""Study plots as PNG files (matplotlib ``Figure`` objects: no pyplot global state)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["heatmap", "line_plot", "scatter_plot"]


def line_plot(rows: list[dict[str, Any]], x: str, y: str, series: list[str], path: str | os.PathLike,
              title: str = "") -> None:
    """One line per distinct ``series`` value combination: ``y`` against ``x`` (log-2 x axis)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[s] for s in series), []).append(r)
    for label, group in groups.items():
        group = sorted(group, key=lambda r: r[x])
        ax.plot([r[x] for r in group], [r[y] for r in group], marker="o", label=" ".join(map(str, label)))
    ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    if groups:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def heatmap(values: list[list[float]], rows: list[str], cols: list[str], path: str | os.PathLike,
            title: str = "", marks: list[list[str]] | None = None) -> None:
    """A heatmap of ``values`` (rows x cols, NaN shown blank), each cell annotated (``marks`` or the value)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = np.array(values, dtype=float)
    fig = Figure(figsize=(1.2 * len(cols) + 2.5, 0.5 * len(rows) + 1.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = marks[i][j] if marks else ("" if np.isnan(data[i, j]) else f"{data[i, j]:.2f}")
            ax.text(j, i, text, ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def scatter_plot(rows: list[dict[str, Any]], x: str, y: str, label: str, path: str | os.PathLike,
                 title: str = "") -> None:
    """One labelled point per row: ``y`` against ``x`` (log x axis), e.g. accuracy against clips/s."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in rows:
        if r.get(x) is None or r.get(y) is None:
            continue
        ax.scatter([r[x]], [r[y]], s=40)
        ax.annotate(str(r[label]), (r[x], r[y]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
