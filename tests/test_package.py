"""Tests for the package as a whole: the lazy top-level API, import weight, the import graph (no cycles, counting
imports inside functions), file sizes and ``__all__`` in every module."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nfaudio

ROOT = Path(nfaudio.__file__).resolve().parent
MODULES = sorted(
    ".".join(("nfaudio", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
    for p in ROOT.rglob("*.py"))


def test_import_nfaudio_loads_no_heavy_dependency() -> None:
    code = ("import sys, nfaudio; heavy = sorted(m for m in ('torch', 'numpy', 'pandas', 'librosa', 'timm', "
            "'soundfile', 'sklearn') if m in sys.modules); print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_top_level_api_resolves_lazily_to_the_library_objects() -> None:
    from nfaudio.cv import run_cv
    from nfaudio.export import export_onnx
    from nfaudio.models import create_model
    from nfaudio.predict import Predictor
    from nfaudio.training import train_from_config

    assert nfaudio.create_model is create_model
    assert nfaudio.train is train_from_config
    assert nfaudio.cross_validate is run_cv
    assert nfaudio.Predictor is Predictor
    assert nfaudio.export_onnx is export_onnx
    for name in nfaudio.__all__:
        assert getattr(nfaudio, name) is not None, name
    assert set(nfaudio.__all__) <= set(dir(nfaudio))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = nfaudio.nope


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """nfaudio modules imported anywhere in a file (module level or inside functions), except the type-only
    imports under ``if TYPE_CHECKING:``, which never run."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "nfaudio")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nfaudio":
            for alias in node.names:  # `from nfaudio.models import registry` imports the submodule
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _module_file(sub) else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _import_graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(_module_file(name)) if m != name} for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    graph = {"nfaudio.a": {"nfaudio.b"}, "nfaudio.b": {"nfaudio.c"}, "nfaudio.c": {"nfaudio.a"}, "nfaudio.d": set()}
    assert _cycles(graph) == [["nfaudio.a", "nfaudio.b", "nfaudio.c"]]
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nfaudio.predict import Predictor\n"
                   "def f():\n    from nfaudio.config import load_config\n    import nfaudio.rundir\n")
    assert _imports(src) == {"nfaudio.config", "nfaudio.rundir"}


def test_no_import_cycle_among_nfaudio_modules() -> None:
    graph = _import_graph()
    assert len(graph) > 30
    assert _cycles(graph) == []


def test_leaves_import_no_job_module() -> None:
    # config, choices, schema, fileio, runtime and recipes sit under everything else: they import only each other
    leaves = {"nfaudio.config", "nfaudio.choices", "nfaudio.schema", "nfaudio.fileio", "nfaudio.runtime",
              "nfaudio.recipes"}
    graph = _import_graph()
    for leaf in leaves:
        assert graph[leaf] <= leaves, (leaf, graph[leaf] - leaves)


@pytest.mark.parametrize("name", MODULES)
def test_module_is_small_and_declares_all(name: str) -> None:
    path = _module_file(name)
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{path} has {lines} lines"
    if name == "nfaudio.__main__":
        return
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing objects {missing}"


# ------------------------------------------------------------------------- the wheel, installed outside the checkout
def _write_digits(root: Path) -> Path:
    """An FSDD-like manifest (filename,label,official_split,fold,group) of 8 kHz tones: 3 digits, 2 speakers."""
    import pandas as pd
    from conftest import write_tone

    rows = []
    for g, group in enumerate(("ann", "bob")):
        for label in range(3):
            for take in range(2):
                name = f"audio/{label}_{group}_{take}.wav"
                write_tone(root / name, 0.5, sr=8000, seed=label)
                rows.append({"filename": name, "label": label, "official_split": "test" if take == 0 else "train",
                             "fold": g + 1, "group": group})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root / "metadata.csv"


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_installed_wheel_ships_the_recipes_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="building the wheel without network needs setuptools installed")
    pytest.importorskip("wheel", reason="building the wheel without network needs wheel installed")
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to pyproject.toml
    shutil.copytree(ROOT, src / "nfaudio", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT.parent / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("nfaudio-*.whl")
    site = tmp_path / "site"  # nfaudio alone; torch and the rest come from this interpreter's environment
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)

    where = run(sys.executable, "-c", "import nfaudio; print(nfaudio.__file__)")
    assert Path(where.stdout.strip()).parent == site / "nfaudio", where.stderr
    nfaudio = (sys.executable, str(site / "bin" / "nfaudio"))  # the wheel's console script

    listed = run(*nfaudio, "recipes")
    assert listed.returncode == 0, listed.stderr
    shipped = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    assert [line.split()[0] for line in listed.stdout.splitlines()] == shipped
    assert sorted(p.name for p in (site / "nfaudio" / "recipes").glob("*.yaml")) == [f"{n}.yaml" for n in shipped]

    # a shipped recipe's data path points nowhere once installed: a one-line error until --set gives it
    run_dir = elsewhere / "runs" / "fsdd"
    missing = run(*nfaudio, "train", "--recipe", "fsdd", "--out", str(run_dir))
    assert missing.returncode == 2
    err = missing.stderr.strip().splitlines()
    assert len(err) == 1, missing.stderr
    assert "metadata.csv" in err[0]

    manifest = _write_digits(tmp_path / "digits")
    tiny = ["model.name=nfaudio_tiny", "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=4",
            "train.eval_batch_size=8", "train.progress=false", "train.device=cpu", "data.num_workers=0",
            f"data.manifest={manifest}"]
    trained = run(*nfaudio, "--quiet", "train", "--recipe", "fsdd", *[a for t in tiny for a in ("--set", t)],
                  "--out", str(run_dir))
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.startswith("best accuracy ")
    assert (run_dir / "best.pt").is_file()
    config = (run_dir / "config.yaml").read_text()
    assert f"manifest: {manifest}" in config
    assert "n_mels: 64" in config  # the shipped recipe's own settings

    demo = run(*nfaudio, "--quiet", "demo", "--fast", "--out", str(elsewhere / "demo"))
    assert demo.returncode == 0, demo.stderr
    assert "demo CV mean macro_auc" in demo.stdout
    assert (elsewhere / "demo" / "summary.json").is_file()
    assert (elsewhere / "demo" / "predict" / "submission.csv").is_file()
