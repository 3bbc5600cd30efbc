"""Tests for probes on frozen embeddings (nfaudio.embed.labels, probe, probe_run, attach) and ``nfaudio probe``:
CV metrics against scikit-learn by hand on the same folds, labels by file vs by window, the scores table's keys,
save/load, errors naming the file, and an attached probe's model scoring like the probe (torch and onnxruntime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FRONTEND, write_tone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nfaudio.cli import main
from nfaudio.embed.attach import attach_probe, linear_weights
from nfaudio.embed.labels import LabelError, match_labels, read_labels
from nfaudio.embed.probe import load_probe
from nfaudio.embed.probe_run import _labelled, predict_store, score_store, train_probe
from nfaudio.embed.store import StoreWriter, open_store
from nfaudio.formats import empty_output

pytestmark = pytest.mark.usefixtures("one_torch_thread")
pytest.importorskip("pyarrow")

DIM, WINDOWS, FILES = 6, 3, 12


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """12 files x 3 windows of 6-wide embeddings; file i is class ``c{i % 3}`` (a noisy class direction)."""
    rng = np.random.default_rng(0)
    w = StoreWriter(tmp_path_factory.mktemp("store") / "store", DIM, info={"models": [{"path": "m.pt"}]},
                    shard_rows=10)
    for i in range(FILES):
        emb = rng.normal(size=(WINDOWS, DIM)) + 1.5 * np.eye(DIM)[i % 3]
        w.add(f"/rec/f{i:02d}.wav", np.arange(WINDOWS) * 1.0, np.arange(WINDOWS) + 1.0, emb)
    return w.close()


def _labels(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _file_labels(tmp_path: Path) -> Path:
    return _labels(tmp_path / "labels.csv", [{"file": f"/rec/f{i:02d}.wav", "label": f"c{i % 3}"}
                                             for i in range(FILES)])


# ----------------------------------------------------------------------------------------- CV against sklearn
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_cv_metrics_equal_sklearn_by_hand_on_the_same_grouped_folds(store, tmp_path, kind) -> None:
    res = train_probe(store, _file_labels(tmp_path), tmp_path / "probe", kind=kind, n_folds=3, hidden=(8,),
                      max_iter=300)
    oof = pd.read_csv(tmp_path / "probe" / "oof.csv", dtype={"start_s": float, "end_s": float})
    assert (oof.groupby("file")["fold"].nunique() == 1).all()  # grouped by file
    assert sorted(oof["fold"].unique()) == [0, 1, 2]
    keys, emb = store.keys(), store.embeddings()
    assert oof[["file", "start_s", "end_s"]].equals(keys)  # every window labelled (file labels), in store order
    y = np.array([int(f[-6:-4]) % 3 for f in keys["file"]])
    folds = oof["fold"].to_numpy()
    probs = np.zeros((len(y), 3))
    for k in range(3):
        clf = (LogisticRegression(C=1.0, max_iter=300, random_state=0) if kind == "logreg" else
               MLPClassifier(hidden_layer_sizes=(8,), alpha=1e-4, max_iter=300, random_state=0))
        est = make_pipeline(StandardScaler(), clf).fit(emb[folds != k].astype(np.float64), y[folds != k])
        probs[folds == k] = est.predict_proba(emb[folds == k].astype(np.float64))
    np.testing.assert_allclose(oof[["c0", "c1", "c2"]].to_numpy(), probs, atol=1e-5)  # oof.csv: 6 digits
    acc = {str(k): float(np.mean(probs[folds == k].argmax(1) == y[folds == k])) for k in range(3)}
    m = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert m == res.metrics | {"kind": kind, "task": "multiclass", "classes": ["c0", "c1", "c2"]}
    assert m["metric"] == "accuracy"
    assert m["n_rows"] == FILES * WINDOWS
    assert m["folds"] == [0, 1, 2]
    assert {k: v["accuracy"] for k, v in m["per_fold"].items()} == pytest.approx(acc, abs=1e-12)
    assert m["mean"]["accuracy"] == pytest.approx(np.mean(list(acc.values())))
    assert m["std"]["accuracy"] == pytest.approx(np.std(list(acc.values())))
    assert m["pooled_oof"]["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))


def test_multilabel_cv_is_one_vs_rest_and_scores_macro_auc_by_hand(store, tmp_path) -> None:
    rows = []
    for i in range(FILES):
        for s in range(WINDOWS):
            lab = {0: "a", 1: "a;b", 2: "nocall"}[(i + s) % 3]
            rows.append({"file": f"/rec/f{i:02d}.wav", "start_s": float(s), "end_s": s + 1.0, "label": lab})
    res = train_probe(store, _labels(tmp_path / "l.csv", rows), None, n_folds=3)
    assert res.probe.task == "multilabel"
    assert res.probe.classes == ["a", "b"]
    assert res.metrics["metric"] == "macro_auc"
    emb = store.embeddings().astype(np.float64)
    y = np.array([[r["label"] != "nocall", "b" in r["label"]] for r in rows], dtype=int)
    folds = res.oof["fold"].to_numpy()
    probs = np.zeros(y.shape)
    for k in range(3):
        est = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=1000, random_state=0)))
        probs[folds == k] = est.fit(emb[folds != k], y[folds != k]).predict_proba(emb[folds == k])
    np.testing.assert_allclose(res.oof[["a", "b"]].to_numpy(), probs, atol=1e-12)
    for k in range(3):
        assert res.metrics["per_fold"][str(k)]["macro_auc"] == pytest.approx(
            roc_auc_score(y[folds == k], probs[folds == k], average="macro"))
    assert res.metrics["pooled_oof"]["macro_auc"] == pytest.approx(roc_auc_score(y, probs, average="macro"))
    # the saved probe (fit on all windows) is sklearn's OvR fit on all windows, as sigmoids
    full = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=1000, random_state=0)))
    np.testing.assert_allclose(res.probe.predict_proba(emb), full.fit(emb, y).predict_proba(emb), atol=1e-9)


# ----------------------------------------------------------------------------------------- labels
def test_a_file_label_applies_to_all_its_windows_and_a_window_row_overrides_it(store, tmp_path) -> None:
    by_file = train_probe(store, _file_labels(tmp_path), None, n_folds=3)
    rows = [{"file": f"/rec/f{i:02d}.wav", "start_s": float(s), "end_s": s + 1.0, "label": f"c{i % 3}"}
            for i in range(FILES) for s in range(WINDOWS)]
    by_window = train_probe(store, _labels(tmp_path / "w.csv", rows), None, n_folds=3)
    assert by_file.metrics == by_window.metrics
    for (w1, b1), (w2, b2) in zip(by_file.probe.layers, by_window.probe.layers):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)
    # a file row, one of its windows relabelled, and a file labelled only in one window (start only, 1 ms off)
    mixed = _labels(tmp_path / "m.csv", [{"file": "/rec/f00.wav", "label": "c0"},
                                         {"file": "/rec/f00.wav", "start_s": 1.0, "end_s": 2.0, "label": "c1"},
                                         {"file": "/rec/f05.wav", "start_s": 2.0004, "label": "c2"},
                                         {"file": "/rec/f06.wav", "label": ""}])  # empty: unlabelled
    win = match_labels(store.keys(), read_labels(mixed), mixed)
    assert win.rows.tolist() == [0, 1, 2, 17]
    assert win.labels == [frozenset({"c0"}), frozenset({"c1"}), frozenset({"c0"}), frozenset({"c2"})]
    x, _ = _labelled(store, mixed)  # read shard by shard (the store has 4 shards)
    np.testing.assert_array_equal(x, store.embeddings()[[0, 1, 2, 17]])


def test_a_relative_file_name_is_resolved_against_the_labels_folder(tmp_path) -> None:
    w = StoreWriter(tmp_path / "s", 2)
    w.add(str(tmp_path / "audio" / "x.wav"), [0.0], [1.0], np.ones((1, 2)))
    st = w.close()
    labels = _labels(tmp_path / "labels.csv", [{"file": "audio/x.wav", "label": "a"}])
    assert match_labels(st.keys(), read_labels(labels), labels).rows.tolist() == [0]


def test_label_errors_name_the_labels_file_its_line_and_the_file(store, tmp_path) -> None:
    bad = _labels(tmp_path / "bad.csv", [{"file": "/rec/f00.wav", "label": "c0"},
                                         {"file": "/rec/missing.wav", "label": "c1"}])
    with pytest.raises(LabelError, match=r"bad\.csv: line 3: file /rec/missing\.wav is not in the embedding store"):
        train_probe(store, bad)
    win = _labels(tmp_path / "win.csv", [{"file": "/rec/f01.wav", "start_s": 7.0, "end_s": 8.0, "label": "c0"}])
    with pytest.raises(LabelError, match=r"win\.csv: line 2: file /rec/f01\.wav has no stored window 7-8 s"):
        train_probe(store, win)
    nocol = _labels(tmp_path / "nocol.csv", [{"path": "/rec/f00.wav", "label": "c0"}])
    with pytest.raises(LabelError, match=r"nocol\.csv: no 'file' column"):
        train_probe(store, nocol)
    with pytest.raises(ValueError, match="12 groups in 'group' cannot be split into 20 folds"):
        train_probe(store, _file_labels(tmp_path), n_folds=20)


# ----------------------------------------------------------------------------------------- scoring, save / load
def test_scores_are_keyed_by_window_in_predicts_table_format_and_survive_save_and_load(store, tmp_path) -> None:
    res = train_probe(store, _file_labels(tmp_path), tmp_path / "probe", n_folds=0)
    assert not (tmp_path / "probe" / "metrics.json").exists()
    loaded = load_probe(tmp_path / "probe")
    emb = store.embeddings()
    np.testing.assert_array_equal(loaded.predict_proba(emb), res.probe.predict_proba(emb))  # identical
    assert (loaded.classes, loaded.dim, loaded.task, loaded.source["root"]) == (
        ["c0", "c1", "c2"], DIM, "multiclass", str(store.root))
    y = np.array([int(f[-6:-4]) % 3 for f in store.keys()["file"]])
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0)).fit(
        emb.astype(np.float64), y)
    np.testing.assert_allclose(loaded.predict_proba(emb), ref.predict_proba(emb.astype(np.float64)), atol=1e-9)
    scores = score_store(loaded, store)
    assert scores.index.names == ["file", "start_s", "end_s"]
    assert scores.index.to_frame(index=False).equals(store.keys())
    path = predict_store(loaded, store, tmp_path / "out")
    table = pd.read_csv(path, dtype={"start_s": float, "end_s": float})
    assert list(table.columns) == list(empty_output("scores.csv", loaded.classes).columns)  # nfaudio predict's
    assert table[["file", "start_s", "end_s"]].equals(store.keys())
    np.testing.assert_allclose(table[loaded.classes].to_numpy(), scores.to_numpy(), rtol=1e-5)


def test_a_store_of_another_width_is_refused_naming_both(store, tmp_path) -> None:
    train_probe(store, _file_labels(tmp_path), tmp_path / "probe", n_folds=0)
    w = StoreWriter(tmp_path / "wide", DIM + 1)
    w.add("/rec/f00.wav", [0.0], [1.0], np.zeros((1, DIM + 1)))
    wide = w.close()
    with pytest.raises(ValueError, match=rf"{tmp_path / 'wide'} holds 7-wide embeddings, but the probe "
                                         rf"{tmp_path / 'probe'} was trained on 6-wide ones"):
        score_store(load_probe(tmp_path / "probe"), wide)


# ----------------------------------------------------------------------------------------- attached to a model
@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("tones")
    return [write_tone(root / f"t{i}.wav", 2.5, seed=i % 3) for i in range(6)]


def _pooled_ckpt(path: Path) -> Path:
    from nfaudio.models import create_model, save_model

    torch.manual_seed(0)
    model = create_model("nfaudio_tiny", num_classes=3, head="pooled", frontend=FRONTEND, drop_rate=0.3)
    return save_model(model.eval(), path, classes=["x", "y", "z"], duration=1.0, activation="sigmoid")


@pytest.mark.parametrize(("head", "multilabel"), [("sed", False), ("sed", True), ("pooled", False)])
def test_an_attached_probe_scores_like_the_probe_in_torch_and_onnxruntime(ckpt, tones, tmp_path, head,
                                                                           multilabel) -> None:
    from nfaudio.predict import Predictor

    model = ckpt if head == "sed" else _pooled_ckpt(tmp_path / "run" / "best.pt")
    predictor = Predictor.from_checkpoint(model, window=1.0, hop=0.5, num_workers=0)
    predictor.embed_to_dir(tones, tmp_path / "store", progress=False)
    st = open_store(tmp_path / "store")
    rows = [{"file": str(t), "label": ("lo;hi" if i % 3 == 2 else "lo" if i % 3 == 0 else "hi") if multilabel
             else f"p{i % 3}"} for i, t in enumerate(tones)]
    probe = train_probe(st, _labels(tmp_path / "l.csv", rows), tmp_path / "probe", n_folds=0).probe
    assert probe.activation == ("sigmoid" if multilabel else "softmax")
    attached = tmp_path / "attached.pt"
    if head == "pooled":  # the command line, given the checkpoint's run directory
        assert main(["probe", "attach", str(tmp_path / "probe"), str(tmp_path / "run"), "--out", str(attached)]) == 0
    else:
        assert attach_probe(tmp_path / "probe", model, attached) == attached
    want = score_store(probe, st)
    got = Predictor.from_checkpoint(attached, window=1.0, hop=0.5, num_workers=0).predict(tones)
    assert list(got.columns) == probe.classes
    assert got.index.equals(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), atol=1e-5, rtol=0)
    pytest.importorskip("onnxruntime")
    from nfaudio.export import export_onnx, read_onnx_metadata

    onnx_path = export_onnx(attached, tmp_path / "attached.onnx")
    meta = read_onnx_metadata(onnx_path)
    assert meta["classes"] == probe.classes
    assert meta["activation"] == probe.activation
    ort = Predictor.from_checkpoint(onnx_path, backend="onnxruntime", window=1.0, hop=0.5, num_workers=0)
    np.testing.assert_allclose(ort.predict(tones).to_numpy(), want.to_numpy(), atol=1e-5, rtol=0)


def test_linear_weights_fold_the_standardisation_and_an_mlp_cannot_be_attached(store, ckpt, tmp_path) -> None:
    probe = train_probe(store, _file_labels(tmp_path), n_folds=0).probe
    w, b = linear_weights(probe)
    emb = store.embeddings().astype(np.float64)
    np.testing.assert_allclose(emb @ w.T + b, probe.logits(emb), atol=1e-10)
    mlp = train_probe(store, _file_labels(tmp_path), tmp_path / "mlp", kind="mlp", n_folds=0, hidden=(4,)).probe
    with pytest.raises(ValueError, match="only a logistic-regression probe is one linear layer"):
        attach_probe(mlp, ckpt, tmp_path / "x.pt")
    train_probe(store, _file_labels(tmp_path), tmp_path / "lr", n_folds=0)
    with pytest.raises(ValueError, match=rf"{ckpt} makes \d+-wide embeddings, but the probe {tmp_path / 'lr'} "
                                         "takes 6-wide ones"):
        attach_probe(tmp_path / "lr", ckpt, tmp_path / "x.pt")


# ----------------------------------------------------------------------------------------- the command line
def test_probe_commands_train_predict_suggest_and_relabel(store, tmp_path, capsys) -> None:
    labels = _file_labels(tmp_path)
    assert main(["probe", "train", "--embeddings", str(store.root), "--labels", str(labels), "--out",
                 str(tmp_path / "p"), "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "logreg probe (multiclass, 3 classes, 36 labelled windows)" in out
    assert "; pooled OOF 0." in out
    assert main(["probe", "predict", str(tmp_path / "p"), "--embeddings", str(store.root), "--out",
                 str(tmp_path / "pred")]) == 0
    assert len(pd.read_csv(tmp_path / "pred" / "scores.csv")) == FILES * WINDOWS
    assert main(["probe", "suggest", str(tmp_path / "p"), "--embeddings", str(store.root), "--out",
                 str(tmp_path / "next.csv"), "-k", "4"]) == 0
    sug = pd.read_csv(tmp_path / "next.csv")
    assert len(sug) == 4
    assert (tmp_path / "next.selections.txt").is_file()
    scores = score_store(load_probe(tmp_path / "p"), store)
    margin = np.abs(scores.to_numpy() - 0.5).min(1)
    np.testing.assert_allclose(np.sort(margin)[:4], np.abs(sug["score"] - 0.5), atol=1e-6)  # most uncertain first
    sug["label"] = "c1"  # filled in: the suggestions table is a labels table
    sug.to_csv(tmp_path / "next.csv", index=False)
    assert main(["probe", "train", "-e", str(store.root), "-l", str(tmp_path / "next.csv"), "-o",
                 str(tmp_path / "p2"), "--folds", "0", "--task", "multilabel"]) == 0


def test_probe_command_errors_are_one_line_naming_the_file(store, ckpt, tmp_path, capsys) -> None:
    bad = _labels(tmp_path / "bad.csv", [{"file": "/rec/nope.wav", "label": "c0"}])
    assert main(["probe", "train", "-e", str(store.root), "-l", str(bad), "-o", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nfaudio probe: error: {bad}: line 2: file /rec/nope.wav is not in the embedding store"]
    assert main(["probe", "predict", str(tmp_path / "none"), "-e", str(store.root), "-o", str(tmp_path)]) == 2
    assert "no probe" in capsys.readouterr().err
