"""Training on pseudo-labels: mixing and extra rows against hand-computed items, weighted file sampling,
class checks, and tiny trainings (fit, CV) whose validation stays labelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import tiny_recipe, write_audio

from nfaudio.data import AudioDataset, read_birdclef
from nfaudio.selftrain.data import MixWithPseudo, PseudoDataset, WithPseudoRows, load_pseudo_tables
from nfaudio.training import fit

SR = 16000


def write_pseudo(root: Path, windows: list[tuple[str, float, float, list[float]]], classes: list[str],
                 weights: dict[str, float] | None = None) -> Path:
    """A pseudo-label folder in the format nfaudio pseudo-label writes (tested against it in test_selftrain)."""
    root.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([(f, s, e, *t) for f, s, e, t in windows], columns=["file", "start_s", "end_s", *classes])
    table.to_csv(root / "pseudo_labels.csv", index=False)
    files = table.groupby("file", sort=False).size().rename("windows").reset_index()
    files["kept"] = files["windows"]
    files["weight"] = [(weights or {}).get(f, 1.0) for f in files["file"]]
    files.to_csv(root / "pseudo_files.csv", index=False)
    (root / "pseudo_labels.json").write_text(json.dumps({"format": "nfaudio-pseudo-labels", "version": 1,
                                                         "classes": classes}))
    return root


@pytest.fixture
def pool(tmp_path: Path, tiny_birdclef) -> tuple[Path, list[str]]:
    """Two unlabelled 3 s recordings and a table of 1 s windows over them, in the tiny dataset's classes."""
    classes = list(tiny_birdclef.classes)
    a = tmp_path / "pool" / "a.wav"
    b = tmp_path / "pool" / "b.wav"
    write_audio(a, 3.0, sr=SR, seed=1)
    write_audio(b, 3.0, sr=SR, seed=2)
    windows = [(str(a), float(k), k + 1.0, [0.9, 0.1, 0.0]) for k in range(3)]
    windows += [(str(b), float(k), k + 1.0, [0.0, 0.2, 0.7]) for k in range(3)]
    return write_pseudo(tmp_path / "labels", windows, classes, weights={str(a): 3.0, str(b): 1.0}), classes


def _labelled(root, seed=3):
    m = read_birdclef(root)
    return AudioDataset(m, sample_rate=SR, duration=1.0, train=True, seed=seed)


def test_mixing_by_hand(pool, tiny_birdclef) -> None:
    table, classes = pool
    rows, targets = load_pseudo_tables([str(table)], classes)
    one = PseudoDataset(rows.iloc[4:5].reset_index(drop=True), targets[4:5], SR, 1.0, sampling="uniform")
    labelled = _labelled(tiny_birdclef.root)
    for rule in ("max", "weighted"):
        mixed = MixWithPseudo(labelled, one, mix_weight=(0.25, 0.25), p=1.0, rule=rule, seed=3)
        wave, target, weight, row_id = mixed[5]
        lw, lt, lweight, lid = labelled[5]
        pw, pt, _, _ = one[0]
        np.testing.assert_allclose(wave.numpy(), 0.75 * lw.numpy() + 0.25 * pw.numpy(), atol=1e-6)
        expected = torch.maximum(lt, pt) if rule == "max" else 0.75 * lt + 0.25 * pt
        torch.testing.assert_close(target, expected)
        assert (weight, row_id) == (lweight, lid)
    # the pseudo window is the file's audio at [start, start + 1 s]: b.wav from 1 s
    y = sf.read(rows["file"][4], dtype="float32")[0]
    np.testing.assert_allclose(one[0][0].numpy(), y[SR : 2 * SR], atol=1e-6)
    never = MixWithPseudo(labelled, one, p=0.0, seed=3)
    torch.testing.assert_close(never[5][0], labelled[5][0])


def test_pseudo_rows_follow_the_labelled_rows(pool, tiny_birdclef) -> None:
    table, classes = pool
    rows, targets = load_pseudo_tables([str(table)], classes)
    labelled = _labelled(tiny_birdclef.root)
    both = WithPseudoRows(labelled, PseudoDataset(rows, targets, SR, 1.0, weight=0.3))
    assert len(both) == len(labelled) + 6
    wave, target, weight, row_id = both[len(labelled) + 2]
    np.testing.assert_allclose(target.numpy(), [0.9, 0.1, 0.0], rtol=1e-6)
    assert float(weight) == pytest.approx(0.3)
    assert row_id.startswith("pseudo:")
    assert row_id.endswith("a.wav:2")
    assert wave.shape == (SR,)


def test_files_are_drawn_by_their_weight(pool) -> None:
    table, classes = pool
    rows, targets = load_pseudo_tables([str(table)], classes)
    ds = PseudoDataset(rows, targets, SR, 1.0, sampling="weight")
    rng = np.random.default_rng(0)
    draws = np.array([ds.draw(rng) for _ in range(4000)])
    counts = np.bincount(draws, minlength=6)  # a.wav (rows 0-2) weighs 3, b.wav (rows 3-5) 1; windows alike
    np.testing.assert_allclose(counts, [1000] * 3 + [333] * 3, atol=80)


def test_classes_must_be_the_students(pool, tmp_path) -> None:
    table, classes = pool
    with pytest.raises(ValueError, match=rf"classes differ.*not in the data: \['{classes[0]}'\].*table: \['zzz'\]"):
        load_pseudo_tables([str(table)], [*classes[1:], "zzz"])
    empty = write_pseudo(tmp_path / "empty", [], classes)
    with pytest.raises(ValueError, match="no pseudo-labelled windows"):
        load_pseudo_tables([str(empty)], classes)


@pytest.mark.parametrize("mode", ["mix", "rows"])
def test_training_with_pseudo_labels_keeps_validation_labelled(pool, tiny_birdclef, tmp_path, mode) -> None:
    table, _ = pool
    m = read_birdclef(tiny_birdclef.root)
    idx = np.arange(len(m))
    tr, va = m.subset(idx % 3 != 0), m.subset(idx % 3 == 0)
    cfg = tiny_recipe(tiny_birdclef.root, pseudo={"labels": [str(table)], "mode": mode, "weight": 0.5},
                      train={"epochs": 1})
    plain = fit(tiny_recipe(tiny_birdclef.root, train={"epochs": 1}), tr, va, tmp_path / "plain")
    result = fit(cfg, tr, va, tmp_path / mode)
    history = pd.read_csv(tmp_path / mode / "history.csv")
    assert np.isfinite(history[["train_loss", "val_loss", "val_score"]].to_numpy()).all()
    assert result.history[0]["train_loss"] != plain.history[0]["train_loss"]  # the pseudo data was trained on
    assert (tmp_path / mode / "best.pt").is_file()


def test_cv_with_pseudo_rows_scores_only_labelled_rows(pool, tiny_birdclef, tmp_path) -> None:
    from nfaudio.cv import run_cv

    table, _ = pool
    cfg = tiny_recipe(tiny_birdclef.root, pseudo={"labels": [str(table)], "mode": "rows"}, train={"epochs": 1})
    run_cv(cfg, tmp_path, folds=[0])
    folds = pd.read_csv(tmp_path / "folds.csv")
    oof = pd.read_csv(tmp_path / "oof.csv")
    assert sorted(oof["row_id"]) == sorted(folds.loc[folds["fold"] == 0, "row_id"])
    assert not oof["row_id"].astype(str).str.startswith("pseudo:").any()
    assert len(folds) == len(read_birdclef(tiny_birdclef.root))  # folds over the labelled rows only
