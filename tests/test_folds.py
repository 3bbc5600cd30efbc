import numpy as np
import pandas as pd
import pytest

from nfaudio.data import Manifest
from nfaudio.folds import assign_folds


def _manifest(n_per_class=10, classes=("a", "b", "c"), groups=None, fold=None):
    labels = [c for c in classes for _ in range(n_per_class)]
    df = pd.DataFrame({"row_id": [f"r{i}" for i in range(len(labels))], "primary_label": labels})
    df["group"] = groups if groups is not None else [f"g{i % 6}" for i in range(len(df))]
    df["fold"] = fold if fold is not None else -1
    return Manifest(df, list(classes))


def test_stratified_folds_balance_classes():
    m = _manifest()
    folds = assign_folds(m, n_folds=5, seed=1)
    assert folds.shape == (30,)
    assert set(folds) == set(range(5))
    table = pd.crosstab(m.df["primary_label"], folds)
    assert (table.to_numpy() == 2).all()  # 10 per class over 5 folds
    np.testing.assert_array_equal(folds, assign_folds(m, n_folds=5, seed=1))


def test_group_folds_never_split_a_group():
    m = _manifest(groups=[f"author{i // 3}" for i in range(30)])
    folds = assign_folds(m, n_folds=5, strategy="group", seed=0)
    per_group = pd.Series(folds).groupby(m.df["group"].to_numpy()).nunique()
    assert (per_group == 1).all()
    assert len(set(folds)) == 5


def test_leave_one_group_out_gives_one_fold_per_group():
    m = _manifest(groups=[f"spk{i % 4}" for i in range(30)])
    folds = assign_folds(m, strategy="logo", group_column="group")
    assert len(set(folds)) == 4
    for k in range(4):
        assert m.df["group"][folds == k].nunique() == 1


def test_existing_fold_column_is_used_as_is():
    given = np.arange(30) % 3
    m = _manifest(fold=given)
    np.testing.assert_array_equal(assign_folds(m, n_folds=5), given)


def test_errors_are_precise():
    with pytest.raises(ValueError, match="unknown fold strategy 'kfold'"):
        assign_folds(_manifest(), strategy="kfold")
    with pytest.raises(ValueError, match="needs a 'fold' column"):
        assign_folds(_manifest(), strategy="predefined")
    with pytest.raises(ValueError, match="group column 'site'"):
        assign_folds(_manifest(), strategy="group", group_column="site")
    with pytest.raises(ValueError, match="2 groups in 'group' cannot be split into 5 folds"):
        assign_folds(_manifest(groups=["x", "y"] * 15), strategy="group")
