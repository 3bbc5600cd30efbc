import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_recipe

from nfaudio.cv import run_cv
from nfaudio.data import encode_targets, read_birdclef
from nfaudio.metrics import padded_cmap


def _cfg(root, **train):
    return tiny_recipe(root, train={"epochs": 1, "metric": "padded_cmap", **train},
                       cv={"n_folds": 3, "strategy": "group", "group_column": "group"})


@pytest.mark.integration
def test_cv_writes_folds_oof_and_metrics(tiny_birdclef, tmp_path):
    metrics = run_cv(_cfg(tiny_birdclef.root), tmp_path)
    manifest = read_birdclef(tiny_birdclef.root)
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert sorted(folds["row_id"]) == sorted(manifest.df["row_id"])
    # grouped: no author spans two folds
    groups = manifest.df.set_index("row_id")["group"]
    assert (folds.assign(g=groups.loc[folds["row_id"]].to_numpy()).groupby("g")["fold"].nunique() == 1).all()

    oof = pd.read_csv(tmp_path / "oof.csv")
    assert list(oof.columns) == ["row_id", "fold", *manifest.classes]
    assert oof["row_id"].is_unique
    assert set(oof["row_id"]) == set(manifest.df["row_id"])
    merged = oof.merge(folds, on="row_id", suffixes=("", "_assigned"))
    assert (merged["fold"] == merged["fold_assigned"]).all()
    for k in range(3):
        assert (tmp_path / f"fold{k}" / "best.pt").is_file()

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    assert set(saved["per_fold"]) == {"0", "1", "2"}
    per_fold = [v["padded_cmap"] for v in saved["per_fold"].values()]
    assert saved["mean"]["padded_cmap"] == pytest.approx(np.mean(per_fold))
    assert saved["std"]["padded_cmap"] == pytest.approx(np.std(per_fold))
    # pooled OOF score recomputed by hand, rows matched by id
    truth = pd.DataFrame((encode_targets(manifest, secondary_weight=1.0) > 0).astype(float),
                         columns=manifest.classes, index=manifest.df["row_id"])
    y_true = truth.loc[oof["row_id"]].to_numpy()
    assert saved["pooled_oof"]["padded_cmap"] == pytest.approx(padded_cmap(y_true, oof[manifest.classes].to_numpy()))


@pytest.mark.integration
def test_cv_resumes_and_keeps_finished_folds(tiny_birdclef, tmp_path):
    cfg = _cfg(tiny_birdclef.root)
    first = run_cv(cfg, tmp_path, folds=[0])
    assert first["folds"] == [0]
    assert not (tmp_path / "fold1").exists()
    stamp = (tmp_path / "fold0" / "best.pt").stat().st_mtime_ns
    second = run_cv(cfg, tmp_path)
    assert (tmp_path / "fold0" / "best.pt").stat().st_mtime_ns == stamp
    assert second["folds"] == [0, 1, 2]
    assert second["per_fold"]["0"] == first["per_fold"]["0"]


def test_unknown_fold_is_an_error(tiny_birdclef, tmp_path):
    with pytest.raises(ValueError, match=r"folds \[7\] do not exist"):
        run_cv(_cfg(tiny_birdclef.root), tmp_path, folds=[7])


@pytest.mark.integration
def test_full_model_trained_on_all_rows(tiny_birdclef, tmp_path):
    metrics = run_cv(_cfg(tiny_birdclef.root), tmp_path, folds=[1], full=True)
    assert (tmp_path / "full" / "best.pt").is_file()
    assert metrics["full_model"].endswith("best.pt")
    hist = pd.read_csv(tmp_path / "full" / "history.csv")
    assert hist["val_score"].isna().all()
