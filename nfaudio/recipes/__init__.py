"""The recipes shipped with nfaudio: the YAML files in this folder, installed with the package.

``--recipe`` (and :func:`nfaudio.config.load_config`) takes a path or a shipped recipe's name: ``fsdd`` or
``fsdd.yaml``. A file at the given path wins over a shipped recipe of the same name. Every key is documented in
the repository's ``recipes/README.md``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

__all__ = ["describe_recipe", "list_recipes", "recipe_path", "shipped_recipe", "shipped_recipes_dir"]

SUFFIX = ".yaml"


def shipped_recipes_dir() -> Path:
    """The folder holding the shipped recipes (inside the installed package)."""
    return Path(__file__).resolve().parent


def list_recipes() -> list[str]:
    """Names of the shipped recipes (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in shipped_recipes_dir().glob("*" + SUFFIX))


def describe_recipe(path: str | os.PathLike) -> str:
    """A recipe's one-line description: its first comment line (empty when it starts with no comment)."""
    with open(path, encoding="utf-8") as fh:
        first = fh.readline().strip()
    return first.lstrip("#").strip() if first.startswith("#") else ""


def shipped_recipe(name: str) -> Path | None:
    """The shipped recipe called ``name`` (``fsdd`` or ``fsdd.yaml``), or None when there is none."""
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        return None
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return shipped_recipes_dir() / (stem + SUFFIX) if stem in list_recipes() else None


def recipe_path(recipe: str | os.PathLike) -> Path:
    """Where ``recipe`` is: the file at that path if there is one, else the shipped recipe of that name.

    Raises:
        FileNotFoundError: neither exists; the message lists the shipped recipes (closest first).
    """
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = shipped_recipe(os.fspath(recipe))
    if shipped is not None:
        return shipped
    names = list_recipes()
    close = difflib.get_close_matches(path.name.removesuffix(SUFFIX), names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise FileNotFoundError(f"recipe not found: {recipe}{hint} (shipped recipes: {', '.join(names)})")
