"""Recipes: every shipped YAML (nfaudio/recipes/) parses, recipes/README.md documents every config key with its
real default, recipes are found by name, and every recipe trains one optimizer step on tiny synthetic data in its
own data layout.

New recipes are picked up by the glob; their layout (BirdCLEF / CSV manifest / folder-per-class) is chosen
from ``data.kind`` and ``data.manifest``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml

from nfaudio.choices import LOSSES
from nfaudio.config import Config, ConfigError, load_config
from nfaudio.data import read_csv_manifest
from nfaudio.folds import STRATEGIES, assign_folds
from nfaudio.metrics import METRICS, accuracy
from nfaudio.models import list_models, load_model
from nfaudio.training import build_augment, build_model

REPO = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO / "nfaudio" / "recipes"  # the shipped recipes, installed with the package
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
README = REPO / "recipes" / "README.md"
SMOKE_SR = 16000  # tiny data is written at this rate; recipes at other rates resample it


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _type_text(tp: object) -> str:
    """How README.md writes a field type: ``str or null``, ``list of int``, ``[float, float]``."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join("null" if a is type(None) else _type_text(a) for a in args)
    if typing.get_origin(tp) is list:
        return f"list of {_type_text(args[0])}"
    if typing.get_origin(tp) is tuple:
        return "[" + ", ".join(_type_text(a) for a in args) + "]"
    return tp.__name__


def _readme_tables() -> dict[str, dict[str, tuple[str, str]]]:
    """``{section: {key: (type, default)}}`` from the README's per-section key tables."""
    tables: dict[str, dict[str, tuple[str, str]]] = {}
    section = None
    for line in README.read_text().splitlines():
        heading = re.match(r"^### `(\w+)`\s*$", line)
        if heading:
            section = heading.group(1)
            tables[section] = {}
            continue
        row = re.match(r"^\| `(\w+)` \| ([^|]+?) \| `([^`]*)` \|", line)
        if row and section is not None:
            tables[section][row.group(1)] = (row.group(2), row.group(3))
    return tables


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"birdclef2023_eca_nfnet_l0_sed.yaml", "birdclef2025_eca_nfnet_l0_sed.yaml", "fsdd.yaml",
            "folder_clips.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_builds(recipe, tmp_path):
    cfg = load_config(recipe)
    assert cfg.train.metric in METRICS
    assert cfg.loss.name in LOSSES
    assert cfg.cv.strategy in STRATEGIES
    assert cfg.data.kind in ("auto", "birdclef", "folder", "csv")
    assert cfg.model.name in list_models()
    assert cfg.frontend.fmax <= cfg.audio.sample_rate / 2
    if cfg.augment.mixup_p > 0:  # hard labels for multi-label losses, soft ones for cross-entropy
        assert cfg.augment.mixup_rule == ("weighted" if cfg.loss.name == "ce" else "max")
    build_augment(cfg)  # every transform's arguments are valid
    tiny = load_config(recipe, ["model.name=nfaudio_tiny", "model.pretrained=false"])
    model = build_model(tiny, num_classes=3)  # frontend, SpecAugment and head arguments are valid
    assert model.frontend.n_mels == cfg.frontend.n_mels
    assert model.frontend.sample_rate == cfg.audio.sample_rate
    # The resolved config round-trips through YAML (what run directories store).
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert load_config(tmp_path / "config.yaml") == cfg


def test_birdclef2023_recipe_follows_the_2023_winners():
    cfg = load_config(RECIPES_DIR / "birdclef2023_eca_nfnet_l0_sed.yaml")
    assert (cfg.data.kind, cfg.audio.sample_rate, cfg.audio.duration) == ("birdclef", 32000, 5.0)
    f = cfg.frontend
    assert (f.n_mels, f.fmin, f.fmax, f.n_fft, f.hop_length) == (128, 20.0, 16000.0, 2048, 512)
    assert (cfg.model.name, cfg.model.head, cfg.model.pretrained, cfg.model.drop_path_rate) == (
        "eca_nfnet_l0", "sed", True, 0.2)
    assert cfg.loss.name == "focal"
    assert (cfg.augment.mixup_p, cfg.augment.mixup_rule) == (0.5, "max")
    assert cfg.train.balanced_alpha == 0.5
    assert cfg.optim.agc is True
    assert cfg.train.metric == "padded_cmap"
    assert (cfg.cv.strategy, cfg.cv.group_column) == ("group", "group")  # group = author for BirdCLEF


def test_birdclef2025_recipe_uses_20s_crops_and_macro_auc():
    cfg = load_config(RECIPES_DIR / "birdclef2025_eca_nfnet_l0_sed.yaml")
    assert cfg.audio.duration == 20.0
    assert cfg.train.metric == "macro_auc"
    assert cfg.data.kind == "birdclef"


def test_fsdd_recipe_paths_and_speaker_folds():
    cfg = load_config(RECIPES_DIR / "fsdd.yaml")
    assert Path(cfg.data.manifest) == (REPO.parent / "shared/data/fsdd/metadata.csv").resolve()  # beside the checkout
    assert (cfg.loss.name, cfg.train.metric, cfg.model.head) == ("ce", "accuracy", "pooled")
    assert (cfg.data.split_column, cfg.cv.strategy, cfg.cv.group_column) == ("official_split", "logo", "group")
    if not Path(cfg.data.manifest).is_file():
        pytest.skip("FSDD is not in this checkout's shared data folder")
    manifest = read_csv_manifest(cfg.data.manifest, path_column=cfg.data.path_column,
                                 label_column=cfg.data.label_column)
    assert manifest.classes == [str(d) for d in range(10)]
    assert set(manifest.df["official_split"]) == {cfg.data.train_split, cfg.data.val_split}
    folds = assign_folds(manifest, cfg.cv.n_folds, cfg.cv.strategy, cfg.cv.group_column, cfg.train.seed)
    speakers = manifest.df.groupby(folds)["group"].unique()
    assert sorted(speakers.index) == [1, 2, 3, 4, 5, 6]  # the manifest's speaker folds, used as is
    assert all(len(s) == 1 for s in speakers)  # one speaker per fold: leave-one-speaker-out
    assert cfg.train.val_fold in speakers.index


# ------------------------------------------------------------------------------------------- shipped recipes
def test_recipes_have_one_home_and_are_found_by_name(tmp_path, monkeypatch):
    from nfaudio.recipes import list_recipes, recipe_path, shipped_recipes_dir

    assert shipped_recipes_dir() == RECIPES_DIR
    assert list_recipes() == [p.stem for p in RECIPES]
    assert sorted(p.name for p in README.parent.iterdir()) == ["README.md"]  # no second copy to drift
    monkeypatch.chdir(tmp_path)
    for recipe in RECIPES:
        assert recipe_path(recipe.stem) == recipe_path(recipe.name) == recipe
        assert load_config(recipe.stem) == load_config(recipe.name) == load_config(recipe)
    # a file at the given path wins over the shipped recipe of that name
    (tmp_path / "fsdd.yaml").write_text("train:\n  epochs: 7\n")
    assert load_config("fsdd.yaml").train.epochs == 7
    assert load_config("fsdd").train.epochs == load_config(RECIPES_DIR / "fsdd.yaml").train.epochs == 20
    with pytest.raises(ConfigError, match=r"recipe not found: fsdx; did you mean 'fsdd'\? \(shipped recipes: "):
        load_config("fsdx")
    with pytest.raises(ConfigError, match="recipe not found: sub/fsdd"):  # a path is never a recipe's name
        load_config("sub/fsdd")


def test_nfaudio_recipes_lists_each_with_its_first_comment_line(capsys):
    from nfaudio.cli import main

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(RECIPES)
    for line, recipe in zip(lines, RECIPES):
        first = recipe.read_text().splitlines()[0]
        assert first.startswith("# "), f"{recipe.name} starts with no one-line description"
        assert len(first) > 20, f"{recipe.name}: {first!r} describes nothing"
        name, description = line.split(maxsplit=1)
        assert (name, description) == (recipe.stem, first[2:])
    assert main(["recipes", "fsdd"]) == 0
    assert capsys.readouterr().out == (RECIPES_DIR / "fsdd.yaml").read_text()
    assert main(["recipes", "fsdx"]) == 2
    assert "no shipped recipe 'fsdx'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- README
def test_readme_documents_every_key_with_its_type_and_default():
    tables = _readme_tables()
    defaults = Config().to_dict()
    for section, cls in _sections().items():
        assert section in tables, f"README lacks a table for section '{section}'"
        fields = [f.name for f in dataclasses.fields(cls)]
        assert set(tables[section]) == set(fields), f"section '{section}': README and config.py keys differ"
        hints = typing.get_type_hints(cls)
        for key in fields:
            type_text, default = tables[section][key]
            assert type_text == _type_text(hints[key]), f"{section}.{key}: README type {type_text}"
            assert yaml.safe_load(default) == defaults[section][key], f"{section}.{key}: README default {default}"


def test_readme_lists_every_recipe():
    text = README.read_text()
    for recipe in RECIPES:
        assert f"`{recipe.name}`" in text, f"README does not describe {recipe.name}"


# ------------------------------------------------------------------------------------------- tiny data
def _tone_clip(label_index: int, seconds: float, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.5 * np.sin(2 * np.pi * (300.0 + 250.0 * label_index) * t) + 0.05 * rng.standard_normal(len(t))
    return y.astype(np.float32)


def _write_csv_data(root: Path, groups: tuple[str, ...], takes: int, with_fold: bool) -> Path:
    """An FSDD-like manifest (filename,label,fold,group,take_index,official_split) with tone clips."""
    rows = []
    (root / "audio").mkdir(parents=True)
    for g, group in enumerate(groups):
        for label in range(3):
            for take in range(takes):
                name = f"audio/{label}_{group}_{take}.wav"
                sf.write(root / name, _tone_clip(label, 0.4 + 0.1 * take, SMOKE_SR, seed=100 * g + 10 * label + take),
                         SMOKE_SR)
                rows.append({"filename": name, "label": label, "fold": g + 1, "group": group, "take_index": take,
                             "official_split": "test" if take == 0 else "train"})
    table = pd.DataFrame(rows)
    if not with_fold:
        table = table.drop(columns="fold")
    table.to_csv(root / "metadata.csv", index=False)
    return root / "metadata.csv"


def _write_folder_data(root: Path) -> Path:
    for label in range(3):
        (root / f"class{label}").mkdir(parents=True)
        for k in range(4):
            sf.write(root / f"class{label}" / f"clip{k}.wav", _tone_clip(label, 1.0, SMOKE_SR, seed=10 * label + k),
                     SMOKE_SR)
    return root


@pytest.fixture(scope="module")
def birdclef_root(tmp_path_factory) -> Path:
    from nfaudio.synth import SynthConfig, generate_dataset

    cfg = SynthConfig(n_species=3, clips_per_species=6, clip_seconds=(1.0, 2.0), n_soundscapes=0,
                      sample_rate=SMOKE_SR, authors_per_species=4, seed=1)  # 18 clips by 6 authors
    return generate_dataset(tmp_path_factory.mktemp("birdclef"), cfg).root


def _smoke_overrides(cfg: Config, tmp_path: Path, birdclef_root: Path) -> list[str]:
    """Tiny model, one step, tiny data in the recipe's own layout; everything else stays the recipe's."""
    out = ["model.name=nfaudio_tiny", "model.pretrained=false", "train.epochs=1", "train.max_steps_per_epoch=1",
           "train.min_steps=null", "train.batch_size=4", "train.eval_batch_size=8", "train.progress=false",
           "train.device=cpu", "data.num_workers=0"]
    if cfg.audio.sample_rate > SMOKE_SR:  # keep the recipe's rate where the tiny data allows it
        out += [f"audio.sample_rate={SMOKE_SR}", f"frontend.fmax={min(cfg.frontend.fmax, SMOKE_SR / 2)}"]
    if cfg.data.kind == "birdclef":
        out += [f"data.root={birdclef_root}", "cv.n_folds=2"]
    elif cfg.data.kind == "csv" or cfg.data.manifest:
        out += [f"data.manifest={_write_csv_data(tmp_path / 'csv', ('ann', 'bob'), takes=3, with_fold=True)}",
                "data.root=null"]
        if not cfg.data.split_column:
            out += ["cv.n_folds=2", "train.val_fold=1"]
    else:
        out += [f"data.root={_write_folder_data(tmp_path / 'folder')}", "data.manifest=null", "cv.n_folds=2"]
    return out


# ------------------------------------------------------------------------------------------- smoke runs
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
@pytest.mark.integration
def test_recipe_trains_one_step(recipe, tmp_path, birdclef_root):
    from nfaudio.training import train_from_config

    cfg = load_config(recipe)
    cfg = load_config(recipe, _smoke_overrides(cfg, tmp_path, birdclef_root))
    out = tmp_path / "run"
    result = train_from_config(cfg, out)

    for name in ("config.yaml", "run.json", "last.pt", "best.pt", "history.csv"):
        assert (out / name).is_file(), name
    assert load_config(out / "config.yaml") == cfg
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == cfg.train.seed
    assert len(info["classes"]) == 3
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 1
    assert len(result.history) == 1
    row = history.iloc[0]
    assert math.isfinite(row["train_loss"])
    assert row["train_loss"] > 0
    assert math.isfinite(row["val_loss"])
    assert 0.0 <= row["val_score"] <= 1.0
    assert (out / "folds.csv").is_file() == (cfg.data.split_column is None)
    model = load_model(out / "best.pt")  # the best checkpoint scores a crop of the recipe's length
    with torch.no_grad():
        clip = model.eval()(torch.zeros(2, int(cfg.audio.duration * cfg.audio.sample_rate))).clip
    assert clip.shape == (2, 3)
    assert torch.isfinite(clip).all()


@pytest.mark.integration
def test_fsdd_cv_leave_one_speaker_out(tmp_path):
    """run_cv with the fsdd recipe on a manifest without a fold column: logo folds from `group`."""
    from nfaudio.cv import run_cv

    manifest = _write_csv_data(tmp_path / "csv", ("ann", "bob", "cid"), takes=2, with_fold=False)
    cfg = load_config(RECIPES_DIR / "fsdd.yaml", [
        f"data.manifest={manifest}", "model.name=nfaudio_tiny", "train.epochs=1", "train.max_steps_per_epoch=1",
        "train.batch_size=4", "train.progress=false", "train.device=cpu", "data.num_workers=0"])
    out = tmp_path / "cv"
    metrics = run_cv(cfg, out)

    rows = pd.read_csv(manifest)
    row_ids = [Path(f).with_suffix("").as_posix() for f in rows["filename"]]
    folds = pd.read_csv(out / "folds.csv", dtype={"row_id": str})
    assert sorted(folds["row_id"]) == sorted(row_ids)
    group_of = dict(zip(row_ids, rows["group"]))
    per_fold = folds.groupby("fold")["row_id"].apply(lambda ids: {group_of[i] for i in ids})
    assert sorted(per_fold.index) == [0, 1, 2]
    assert sorted(g for groups in per_fold for g in groups) == ["ann", "bob", "cid"]  # one speaker per fold
    assert all(len(groups) == 1 for groups in per_fold)

    oof = pd.read_csv(out / "oof.csv", dtype={"row_id": str})
    assert list(oof.columns) == ["row_id", "fold", "0", "1", "2"]
    assert oof["row_id"].is_unique
    assert sorted(oof["row_id"]) == sorted(row_ids)
    assert (oof.set_index("row_id")["fold"] == folds.set_index("row_id")["fold"].loc[oof["row_id"]]).all()
    probs = oof[["0", "1", "2"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)  # softmax: single-label cross-entropy

    truth = dict(zip(row_ids, rows["label"]))
    y_true = np.array([truth[r] for r in oof["row_id"]])
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["metric"] == "accuracy"
    assert stored["n_rows"] == len(rows)
    assert set(stored["per_fold"]) == {"0", "1", "2"}
    for k, part in oof.groupby("fold"):
        idx = part.index.to_numpy()
        assert stored["per_fold"][str(k)]["accuracy"] == pytest.approx(accuracy(y_true[idx], probs[idx]))
    assert stored["pooled_oof"]["accuracy"] == pytest.approx(accuracy(y_true, probs))
    assert stored["mean"]["accuracy"] == pytest.approx(np.mean([v["accuracy"] for v in stored["per_fold"].values()]))
    assert metrics["pooled_oof"] == stored["pooled_oof"]
