"""Tests for nfaudio.metrics: hand-computed cases, sklearn/Kaggle references, alignment by row id."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from nfaudio.metrics import (
    METRICS,
    accuracy,
    get_metric,
    labels_from_scores,
    macro_map,
    macro_roc_auc,
    padded_cmap,
    per_class_report,
    row_wise_micro_f1,
    score_submission,
)


def kaggle_padded_cmap(solution: pd.DataFrame, submission: pd.DataFrame, padding_factor: int = 5) -> float:
    """The BirdCLEF 2023 host's code, kept as the reference."""
    new_rows = pd.DataFrame([[1] * len(solution.columns)] * padding_factor, columns=solution.columns)
    padded_solution = pd.concat([solution, new_rows]).reset_index(drop=True)
    padded_submission = pd.concat([submission, new_rows]).reset_index(drop=True)
    return average_precision_score(padded_solution.values, padded_submission.values, average="macro")


@pytest.fixture
def random_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    sol = (rng.random((40, 6)) < 0.3).astype(float)
    sol[:, 2] = 0  # a class with no positives
    sol[5] = 0  # all-zero rows (nocall)
    sol[17] = 0
    sub = rng.random((40, 6))
    return sol, sub


# ----------------------------------------------------------------------------- padded cmAP
def test_padded_cmap_hand_computed():
    sol = np.array([[1, 0], [0, 1]])
    sub = np.array([[0.9, 0.8], [0.2, 0.3]])
    # padding 1: class A sol [1,0,1] sub [.9,.2,1]: positives ranked 1st,2nd -> AP 1
    #            class B sol [0,1,1] sub [.8,.3,1]: P@1=1 (R .5), P@3=2/3 (R 1) -> AP .5*1+.5*2/3 = 5/6
    assert padded_cmap(sol, sub, padding_factor=1) == pytest.approx((1 + 5 / 6) / 2)
    # padding 5: class A: threshold 1 -> P=1, R=5/6; 0.9 -> P=1, R=1 -> AP 1
    #            class B: threshold 1 -> P=1, R=5/6; 0.8 -> P=5/6, R=5/6; 0.3 -> P=6/7, R=1
    #            AP = 5/6*1 + 1/6*6/7 = 41/42
    assert padded_cmap(sol, sub) == pytest.approx((1 + 41 / 42) / 2)


def test_padded_cmap_class_without_positives():
    sol = np.array([[0], [0]])
    # padded: sol [0,0,1x5]; scores below the padding's 1.0 -> the 5 positives rank first -> AP 1
    assert padded_cmap(sol, np.array([[0.5], [0.1]])) == pytest.approx(1.0)
    # a tie at 1.0 with one negative: threshold 1 -> P=5/6, R=1 -> AP 5/6
    assert padded_cmap(sol, np.array([[1.0], [0.1]])) == pytest.approx(5 / 6)


@pytest.mark.parametrize("padding_factor", [1, 5])
def test_padded_cmap_matches_kaggle_code(random_case, padding_factor):
    sol, sub = random_case
    cols = [f"c{i}" for i in range(sol.shape[1])]
    ref = kaggle_padded_cmap(pd.DataFrame(sol, columns=cols), pd.DataFrame(sub, columns=cols), padding_factor)
    assert padded_cmap(sol, sub, padding_factor) == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------- macro ROC-AUC
def test_macro_auc_hand_computed():
    sol = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 1]])
    sub = np.array([[0.9, 0.5, 0.3, 0.1], [0.1, 0.5, 0.2, 0.2], [0.4, 0.5, 0.1, 0.3], [0.5, 0.5, 0.2, 0.4]])
    # class 0: pos {.9,.4} vs neg {.1,.5}: 3 of 4 pairs ordered -> 0.75
    # class 1: no positives -> skipped; class 3: all positive -> skipped (AUC undefined)
    # class 2: pos {.2} vs neg {.3,.1,.2}: 0 + 1 + 0.5 (tie) -> 1.5/3 = 0.5
    assert macro_roc_auc(sol, sub) == pytest.approx((0.75 + 0.5) / 2)


def test_macro_auc_matches_sklearn(random_case):
    sol, sub = random_case
    scored = sol.sum(0) > 0
    assert not scored[2]
    ref = roc_auc_score(sol[:, scored], sub[:, scored], average="macro")
    assert macro_roc_auc(sol, sub) == pytest.approx(ref, abs=1e-12)


def test_macro_auc_without_positives_raises():
    with pytest.raises(ValueError, match="no class has a positive"):
        macro_roc_auc(np.zeros((3, 2)), np.random.default_rng(0).random((3, 2)))
    with pytest.raises(ValueError, match="positive in all rows"):
        macro_roc_auc(np.array([[1, 0], [1, 0]]), np.ones((2, 2)))


# ----------------------------------------------------------------------------- mAP, report, accuracy
HAND_SOL = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [1, 0, 0, 1]])
HAND_SUB = np.array([[0.9, 0.1, 0.3, 0.5], [0.8, 0.2, 0.2, 0.5], [0.7, 0.3, 0.1, 0.5]])
# class 0: ranking .9(+) .8(-) .7(+): AP = .5*1 + .5*2/3 = 5/6; AUC pos{.9,.7} vs neg{.8}: 1/2
# class 1: ranking .3(-) .2(+) .1(-): AP = 1/2;                 AUC pos{.2} vs neg{.1,.3}: 1/2
# class 2: no positives -> AP, AUC NaN;  class 3: all positive -> AP 1, AUC NaN


def test_macro_map_hand_computed():
    assert macro_map(HAND_SOL, HAND_SUB) == pytest.approx((5 / 6 + 1 / 2 + 1) / 3)


def test_macro_map_matches_sklearn(random_case):
    sol, sub = random_case
    scored = sol.sum(0) > 0
    ref = average_precision_score(sol[:, scored], sub[:, scored], average="macro")
    assert macro_map(sol, sub) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError, match="no class has a positive"):
        macro_map(np.zeros((3, 2)), sub[:3, :2])


def test_per_class_report_hand_computed():
    rep = per_class_report(HAND_SOL, HAND_SUB, ["a", "b", "c", "d"])
    assert list(rep.columns) == ["class", "n_pos", "ap", "auc"]
    assert rep["class"].tolist() == ["a", "b", "c", "d"]
    assert rep["n_pos"].tolist() == [2, 1, 0, 3]
    np.testing.assert_allclose(rep["ap"], [5 / 6, 0.5, np.nan, 1.0])
    np.testing.assert_allclose(rep["auc"], [0.5, 0.5, np.nan, np.nan])
    with pytest.raises(ValueError, match="class names"):
        per_class_report(HAND_SOL, HAND_SUB, ["a"])


def test_per_class_report_consistent_with_macro_metrics(random_case):
    sol, sub = random_case
    cols = [f"c{i}" for i in range(sol.shape[1])]
    rep = per_class_report(pd.DataFrame(sol, columns=cols), pd.DataFrame(sub, columns=cols))
    assert rep["class"].tolist() == cols
    assert rep["ap"].mean() == pytest.approx(macro_map(sol, sub))  # pandas mean skips NaN
    assert rep["auc"].mean() == pytest.approx(macro_roc_auc(sol, sub))


def test_accuracy_hand_computed():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.3]])
    # predictions [1, 0, 2, 0 (tie -> lowest index)] vs targets [1, 1, 2, 0] -> 3/4
    assert accuracy(np.array([1, 1, 2, 0]), scores) == pytest.approx(0.75)
    assert accuracy(np.eye(3)[[1, 1, 2, 0]], scores) == pytest.approx(0.75)
    # multi-hot row 1 {0, 1}: top-1 (0) is a positive -> 4/4; an all-zero row is never correct -> 3/4
    multi = np.eye(3)[[1, 1, 2, 0]]
    multi[1, 0] = 1
    assert accuracy(multi, scores) == pytest.approx(1.0)
    multi[3] = 0
    assert accuracy(multi, scores) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="class indices"):
        accuracy(np.array([0, 1, 2, 3]), scores)


# ----------------------------------------------------------------------------- row-wise F1
def test_row_wise_micro_f1_hand_computed():
    true = ["amecro", "amecro amerob", "nocall", "", {"a", "b"}]
    pred = ["amecro", "amecro", "", "amecro", {"b", "c", "nocall"}]
    # rows: 1; 2*1/(2+1)=2/3; ""->nocall: 1; nocall vs amecro: 0; 2*1/(2+3)=0.4
    assert row_wise_micro_f1(true, pred) == pytest.approx((1 + 2 / 3 + 1 + 0 + 0.4) / 5)
    with pytest.raises(ValueError, match="row counts"):
        row_wise_micro_f1(["a"], [])


def test_labels_from_scores_and_f1():
    scores = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.4], [0.5, 0.1, 0.0]])
    labels = labels_from_scores(scores, ["a", "b", "c"], threshold=0.5)
    assert labels == [{"a", "b"}, {"nocall"}, {"a"}]
    # vs truth [{a}, {nocall}, {c}]: 2/3, 1, 0
    assert row_wise_micro_f1([{"a"}, set(), {"c"}], labels) == pytest.approx((2 / 3 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="classes"):
        labels_from_scores(scores, ["a", "b"])


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_scores_raise(name, bad, random_case):
    sol, sub = random_case
    sub = sub.copy()
    sub[3, 1] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        get_metric(name)(sol, sub)


def test_nan_scores_in_labels_from_scores_raise():
    with pytest.raises(ValueError, match="NaN/inf"):
        labels_from_scores(np.array([[np.nan, 0.1]]), ["a", "b"])


def test_bad_inputs_raise(random_case):
    sol, sub = random_case
    with pytest.raises(ValueError, match="must both be"):
        padded_cmap(sol, sub[:, :3])
    with pytest.raises(ValueError, match="0/1"):
        macro_map(sol * 0.5, sub)
    with pytest.raises(ValueError, match="padding_factor"):
        padded_cmap(sol, sub, padding_factor=-1)


def test_get_metric_close_matches():
    assert get_metric("padded_cmap") is padded_cmap
    with pytest.raises(ValueError, match=r"Did you mean \['padded_cmap'\]"):
        get_metric("padded_camp")
    with pytest.raises(ValueError, match="Available"):
        get_metric("zzz")


# ----------------------------------------------------------------------------- alignment by row id
def _frames(sol: np.ndarray, sub: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    cols = [f"bird{i}" for i in range(sol.shape[1])]
    ids = [f"soundscape_1_{5 * (i + 1)}" for i in range(len(sol))]
    sol_df = pd.DataFrame(sol.astype(int), columns=cols).assign(row_id=ids)[["row_id", *cols]]
    sub_df = pd.DataFrame(sub, columns=cols).assign(row_id=ids)[["row_id", *cols]]
    return sol_df, sub_df


@pytest.mark.parametrize("name", sorted(METRICS))
def test_score_submission_ignores_row_and_column_order(name, random_case):
    sol, sub = random_case
    sol_df, sub_df = _frames(sol, sub)
    shuffled = sub_df.sample(frac=1.0, random_state=1)
    shuffled = shuffled[["row_id", *reversed(sub_df.columns[1:])]]
    expected = get_metric(name)(sol, sub)
    assert score_submission(sol_df, shuffled, name) == pytest.approx(expected, abs=1e-12)
    # a positional comparison of the shuffled rows would give a different number
    assert get_metric(name)(sol, shuffled[sub_df.columns[1:]].to_numpy()) != pytest.approx(expected)
    # plain DataFrames are aligned by index too
    assert get_metric(name)(sol_df.set_index("row_id"), shuffled.set_index("row_id")) == pytest.approx(
        expected
    )


def test_score_submission_callable_metric(random_case):
    sol_df, sub_df = _frames(*random_case)
    assert score_submission(sol_df, sub_df, lambda s, p: padded_cmap(s, p, 1)) == pytest.approx(
        padded_cmap(*random_case, padding_factor=1)
    )


def test_score_submission_row_id_errors(random_case):
    sol_df, sub_df = _frames(*random_case)
    with pytest.raises(ValueError, match=r"2 of 40 missing \['soundscape_1_5', 'soundscape_1_10'\], 0 extra"):
        score_submission(sol_df, sub_df.iloc[2:], "macro_auc")
    extra = pd.concat([sub_df, sub_df.iloc[:1].assign(row_id="other_5")])
    with pytest.raises(ValueError, match=r"0 of 40 missing \[\], 1 extra \['other_5'\]"):
        score_submission(sol_df, extra, "macro_auc")
    with pytest.raises(ValueError, match="1 duplicated row_id"):
        score_submission(sol_df, pd.concat([sub_df, sub_df.iloc[:1]]), "macro_auc")
    with pytest.raises(ValueError, match="no 'row_id' column"):
        score_submission(sol_df, sub_df.drop(columns="row_id"), "macro_auc")


def test_score_submission_column_errors(random_case):
    sol_df, sub_df = _frames(*random_case)
    bad = sub_df.rename(columns={"bird3": "bird33"})
    with pytest.raises(ValueError, match=r"missing 1 \['bird3'\], extra 1 \['bird33'\]"):
        score_submission(sol_df, bad, "padded_cmap")
    with pytest.raises(ValueError, match=r"non-numeric columns: \['bird0'\]"):
        score_submission(sol_df, sub_df.assign(bird0="x"), "padded_cmap")
