"""nfaudio.study: the memory probe, the AGC grid's divergence handling, per-cell resume and the written report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_recipe

from nfaudio.study import agc_study
from nfaudio.study.bn_cost import run_case
from nfaudio.study.framework import Study, cell_key

ROOT = Path(__file__).resolve().parents[1]
FRONTEND = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "fmin": 20.0, "fmax": 4000.0}


def _spec(model: str, batch: int, seconds: float = 1.0) -> dict:
    return {"model": model, "batch_size": batch, "channels_last": False, "samples": int(8000 * seconds),
            "num_classes": 3, "frontend": FRONTEND, "repeats": 1, "device": "cpu", "seed": 0, "threads": 1}


def test_probe_peak_rss_grows_with_batch():
    small, big = run_case(_spec("smallcnn_nf", 2)), run_case(_spec("smallcnn_nf", 256))
    # 256 clips: the saved activations alone are > 100 MB (first conv output: 32 x 16 x 63 floats per clip, x4 more
    # through the rest); each case is a fresh process, so the peaks are the cases' own
    assert big["peak_rss_mb"] - small["peak_rss_mb"] > 50
    assert big["base_rss_mb"] == pytest.approx(small["base_rss_mb"], abs=30)  # same model, same imports


def test_probe_bn_depends_on_mode_and_batch_nf_does_not():
    bn, nf = run_case(_spec("smallcnn_bn", 8, 0.5)), run_case(_spec("smallcnn_nf", 8, 0.5))
    assert nf["train_eval_diff"] == 0.0
    assert nf["batch_dependence"] == 0.0
    assert bn["train_eval_diff"] > 1e-3
    assert bn["batch_dependence"] > 1e-4
    assert bn["params"] > nf["params"]  # BN's affine parameters (conv biases dropped: 2C - C per layer)


def test_agc_huge_lr_without_clipping_is_recorded_as_diverged(tiny_birdclef, tmp_path):
    cfg = tiny_recipe(tiny_birdclef.root, optim={"name": "sgd", "lr": 1e4}, train={"batch_size": 4})
    report = agc_study.run(cfg, tmp_path / "agc", batch_sizes=[4], arms=("none",), epochs=1, max_steps=2)
    rows = json.loads((tmp_path / "agc" / "results.json").read_text())
    assert len(rows) == 1
    assert rows[0]["status"] == "ok"
    assert rows[0]["diverged"] is True
    assert rows[0]["lr"] == pytest.approx(1e4)
    assert rows[0]["seed"] == cfg.train.seed
    assert "torch" in rows[0]
    assert "| none | div |" in report.read_text()
    assert (tmp_path / "agc" / "agc_heatmap.png").stat().st_size > 1000


def test_agc_cell_config_scales_lr_and_sets_the_arm(tiny_birdclef):
    cfg = tiny_recipe(tiny_birdclef.root, optim={"lr": 0.1}, train={"batch_size": 16})
    c = agc_study.cell_config(cfg, {"arm": "clip_norm", "clip": 0.5, "batch_size": 64}, 16, 1, 3)
    assert c.optim.lr == pytest.approx(0.4)
    assert c.optim.agc is False
    assert c.optim.clip_grad_norm == 0.5
    assert c.train.batch_size == 64
    assert c.train.max_steps_per_epoch == 3
    c = agc_study.cell_config(cfg, {"arm": "agc", "clip": 0.04, "batch_size": 8}, 16, 1, 3)
    assert c.optim.lr == pytest.approx(0.05)
    assert c.optim.agc is True
    assert c.optim.agc_clip == 0.04
    assert c.optim.clip_grad_norm is None


def test_framework_skips_finished_cells_and_retries_failed(tmp_path):
    calls = []

    def measure(cell):
        calls.append(cell["x"])
        return {"status": "failed" if cell["x"] == 2 and len(calls) < 4 else "ok", "y": cell["x"] ** 2}

    cells = [{"x": i} for i in range(3)]
    Study("s", tmp_path).run(cells, measure)
    rows = Study("s", tmp_path).run(cells, measure)
    assert calls == [0, 1, 2, 2]  # the second run only retried the failed cell
    assert [r["y"] for r in rows] == [0, 1, 4]
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert [r["cell"] for r in rows] == [cell_key(c) for c in cells]


_GRID_SCRIPT = """
import sys, time
from nfaudio.study.framework import Study

def measure(cell):
    time.sleep(0.3)
    return {"status": "ok", "y": cell["x"] * 10 + 1}

Study("s", sys.argv[1], seed=7).run([{"x": i} for i in range(8)], measure)
"""


def _grid(out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _GRID_SCRIPT, str(out)], env=env)


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "cell_seconds"} for r in rows]


def test_study_killed_by_pid_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out, ref = tmp_path / "killed", tmp_path / "ref"
    proc = _grid(out, env)
    results = out / "results.json"
    deadline = time.time() + 60
    while time.time() < deadline and not (results.exists() and len(json.loads(results.read_text())) >= 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads(results.read_text())
    assert 3 <= len(before) < 8, "the study was not killed mid-grid"
    assert _grid(out, env).wait() == 0
    assert _grid(ref, env).wait() == 0
    after = json.loads(results.read_text())
    assert after[:len(before)] == before  # finished cells untouched, timings included
    assert _stable(after) == _stable(json.loads((ref / "results.json").read_text()))
    assert len((out / "results.csv").read_text().splitlines()) == 9


@pytest.mark.slow
def test_bn_cost_killed_mid_grid_resumes_without_redoing_cells(tmp_path):
    out = tmp_path / "bn"
    cmd = [sys.executable, "-m", "nfaudio", "study", "bn-cost", "--recipe", "fsdd", "--set", "audio.duration=0.25",
           "--out", str(out), "--models", "smallcnn_bn,smallcnn_nf", "--batch-sizes", "2,4,8", "--repeats", "1",
           "--no-channels-last"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (results.exists() and len(json.loads(results.read_text())) >= 2):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads(results.read_text())
    assert 2 <= len(before) < 6, "the study was not killed mid-grid"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    after = json.loads(results.read_text())
    assert after[:len(before)] == before  # finished cells untouched
    assert sorted(r["cell"] for r in after) == sorted({r["cell"] for r in after})  # each cell once
    assert {(r["model"], r["batch_size"]) for r in after} == {(m, b) for m in ("smallcnn_bn", "smallcnn_nf")
                                                                for b in (2, 4, 8)}
    assert all(r["status"] == "ok" for r in after)
    report = (out / "report.md").read_text()
    assert "smallcnn_bn / smallcnn_nf" in report
    assert "| 8 |" in report
    for png in ("train_time.png", "infer_time.png", "memory.png"):
        assert (out / png).stat().st_size > 1000


def test_trainer_clip_grad_norm_bounds_the_first_update(tiny_birdclef, tmp_path):
    """optim.clip_grad_norm: one SGD step (no weight decay, Nesterov 0.9) moves no weight by more than
    lr * (1 + 0.9) * max_norm (the clipped global gradient norm bounds every element)."""
    import numpy as np

    from nfaudio.data import load_data, split_train_val
    from nfaudio.rundir import RunDir
    from nfaudio.training.build import build_model
    from nfaudio.training.state import seed_everything
    from nfaudio.training.trainer import fit

    lr, max_norm = 1.0, 1e-6
    cfg = tiny_recipe(tiny_birdclef.root, optim={"name": "sgd", "lr": lr, "weight_decay": 0.0, "agc": False,
                                                 "clip_grad_norm": max_norm},
                      schedule={"warmup_epochs": 0.0}, train={"epochs": 1, "max_steps_per_epoch": 1, "val_fold": 0})
    manifest = load_data(cfg)
    train_set, val_set = split_train_val(cfg, manifest, np.arange(len(manifest.df)) % 3)
    seed_everything(cfg.train.seed)
    start = build_model(cfg, len(train_set.classes)).state_dict()
    fit(cfg, train_set, val_set, tmp_path / "run")
    end = RunDir(tmp_path / "run").load_state(map_location="cpu")["model"]
    moved = max(float((end[k].float() - start[k].float()).abs().max()) for k in start if start[k].is_floating_point()
                and "running" not in k)
    assert 0 < moved <= lr * 1.9 * max_norm * 1.001


def _tone_clips(root: Path, per_class: int = 4, groups: int = 3, sr: int = 8000, seconds: float = 0.5) -> Path:
    """Three classes of noisy tones (400, 1200, 2800 Hz) recorded by ``groups`` speakers: a CSV manifest."""
    import numpy as np
    import pandas as pd
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    rows = []
    for g in range(groups):
        for label, freq in (("low", 400.0), ("mid", 1200.0), ("high", 2800.0)):
            for i in range(per_class):
                f = freq * (1 + 0.03 * rng.standard_normal())
                y = 0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(len(t))
                path = root / "audio" / f"{label}_{g}_{i}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(path), y.astype(np.float32), sr)
                rows.append({"path": str(path), "label": label, "group": f"s{g}"})
    manifest = root / "clips.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _tone_recipe(manifest: Path, **sections):
    from nfaudio.config import from_dict

    values = {
        "data": {"kind": "csv", "manifest": str(manifest), "num_workers": 0, "validate": False},
        "audio": {"sample_rate": 8000, "duration": 0.5},
        "frontend": {"n_fft": 256, "hop_length": 128, "n_mels": 16, "fmin": 20.0, "fmax": 4000.0},
        "model": {"name": "nfaudio_tiny", "head": "pooled"},
        "loss": {"name": "ce", "frame_weight": 0.0},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"epochs": 1, "batch_size": 8, "seed": 3, "progress": False, "metric": "accuracy"},
        "cv": {"strategy": "logo", "group_column": "group"},
    }
    for name, overrides in sections.items():
        values.setdefault(name, {}).update(overrides)
    return from_dict(values)


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory):
    return _tone_clips(tmp_path_factory.mktemp("tones"))


def test_compare_per_fold_scores_are_the_cv_runs_and_resume_skips(tone_manifest, tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from nfaudio.cv import run_cv
    from nfaudio.study import compare

    cfg = _tone_recipe(tone_manifest)
    report = compare.run(cfg, tmp_path / "cmp", models=["nfaudio_tiny"], folds=[0, 1])
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [(r["model"], r["fold"], r["status"]) for r in rows] == [("nfaudio_tiny", k, "ok") for k in (0, 1)]
    metrics = json.loads((tmp_path / "cmp" / "cv" / "nfaudio_tiny" / "metrics.json").read_text())
    ref = run_cv(cfg, tmp_path / "ref", folds=[0, 1])  # the same recipe through nfaudio cv by hand
    for r in rows:
        assert r["score"] == metrics["per_fold"][str(r["fold"])]["accuracy"]
        assert r["score"] == pytest.approx(ref["per_fold"][str(r["fold"])]["accuracy"])
        oof = pd.read_csv(tmp_path / "cmp" / "cv" / "nfaudio_tiny" / f"fold{r['fold']}" / "oof.csv")
        classes = [c for c in oof.columns if c not in ("row_id", "fold")]
        labels = pd.read_csv(tmp_path / "ref" / "folds.csv").set_index("row_id")["primary_label"]
        y = np.stack([(labels.loc[oof["row_id"]].to_numpy() == c) for c in classes], 1)
        assert r["macro_auc"] == pytest.approx(roc_auc_score(y, oof[classes].to_numpy(), average="macro"))
        assert r["params"] > 1000
        assert r["infer_clips_per_s"] > 0
        assert r["x_real_time"] == pytest.approx(r["infer_clips_per_s"] * 0.5)
    assert "| nfaudio_tiny |" in report.read_text()
    assert (tmp_path / "cmp" / "accuracy_vs_speed.png").stat().st_size > 1000

    def boom(*a, **k):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr("nfaudio.cv.run_cv", boom)
    compare.run(cfg, tmp_path / "cmp", models=["nfaudio_tiny"], folds=[0, 1])
    assert json.loads((tmp_path / "cmp" / "results.json").read_text()) == rows


def test_compare_epoch_budget_trains_every_model_that_many_epochs_and_scores_the_last(tone_manifest, tmp_path):
    import pandas as pd

    from nfaudio.study import compare

    cfg = _tone_recipe(tone_manifest, train={"early_stop_patience": 1})
    with pytest.raises(ValueError, match="not both"):
        compare.run(cfg, tmp_path / "both", models=["nfaudio_tiny"], folds=[0], budget_seconds=5.0, epochs=2)
    report = compare.run(cfg, tmp_path / "cmp", models=["nfaudio_tiny"], folds=[0], epochs=3)
    (row,) = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert (row["status"], row["epochs"], row["budget_epochs"]) == ("ok", 3, 3)
    history = pd.read_csv(tmp_path / "cmp" / "cv" / "nfaudio_tiny" / "fold0" / "history.csv")
    assert len(history) == 3  # early stopping off under a fixed budget
    assert "3 epochs for every model" in report.read_text()


@pytest.mark.parametrize(("flags", "expected"), [
    ([], {"budget_seconds": 60.0, "epochs": None}),  # the CPU-sized default: minutes
    (["--epochs", "4"], {"budget_seconds": None, "epochs": 4}),
    (["--budget-seconds", "15"], {"budget_seconds": 15.0, "epochs": None}),
    (["--full"], {"budget_seconds": None, "epochs": None}),  # the recipe's epochs
])
def test_compare_cli_budget_defaults(tone_manifest, tmp_path, monkeypatch, flags, expected):
    from nfaudio import config
    from nfaudio.cli import main
    from nfaudio.study import compare

    seen = {}
    monkeypatch.setattr(config, "load_config", lambda *a, **k: _tone_recipe(tone_manifest))
    monkeypatch.setattr(compare, "run", lambda cfg, out, **kw: seen.update(kw) or out / "report.md")
    assert main(["study", "compare", "--recipe", "x.yaml", "--out", str(tmp_path / "c"), *flags]) == 0
    assert {k: seen[k] for k in expected} == expected


def test_compare_budget_schedule():
    from nfaudio.study.compare import budget_schedule

    assert budget_schedule(0.1, 60.0, 100) == (6, None)  # 600 steps: six whole epochs
    assert budget_schedule(0.1, 10.0, 100) == (2, 50)  # 100 steps: two epochs of 50
    assert budget_schedule(1.0, 0.5, 100) == (2, 1)  # never fewer than one step an epoch


def test_small_data_nested_subsets_and_augment_levels(tone_manifest):
    from nfaudio.study.small_data import augment_level, nested_subset

    labels = ["a"] * 10 + ["b"] * 3
    five, two = nested_subset(labels, 5, seed=1), nested_subset(labels, 2, seed=1)
    assert sorted(labels[i] for i in five) == ["a"] * 5 + ["b"] * 3  # b has only three
    assert set(two) <= set(five)
    assert nested_subset(labels, 5, seed=2) != five
    cfg = _tone_recipe(tone_manifest, augment={"gain_p": 0.3, "specaug_p": 0.2})
    assert augment_level(cfg, "none").augment.gain_p == 0.0
    assert augment_level(cfg, "none").augment.specaug_p == 0.0
    assert augment_level(cfg, "recipe").augment == cfg.augment
    assert augment_level(cfg, "strong").augment.mixup_p == 0.5
    with pytest.raises(ValueError, match="unknown augmentation level 'loud'"):
        augment_level(cfg, "loud")


def test_small_data_step_budget_gives_every_set_size_the_same_steps():
    from nfaudio.study.small_data import epochs_for_steps

    assert epochs_for_steps(300, 50, 16) == 100  # 3 steps an epoch (the last partial batch is dropped)
    assert epochs_for_steps(300, 100, 16) == 50  # 6 steps an epoch
    assert epochs_for_steps(301, 100, 16) == 51  # at least the budget
    assert epochs_for_steps(300, 10, 16) == 300  # one (partial) batch: one step an epoch
    assert epochs_for_steps(1, 300, 16) == 1


def test_small_data_grid_holds_out_a_speaker_and_resumes(tone_manifest, tmp_path, monkeypatch):
    from nfaudio.study import small_data

    cfg = _tone_recipe(tone_manifest)
    kwargs = dict(sizes=[1, 2], models=["nfaudio_tiny"], lrs=[3e-3], steps=[5], augments=["none"], folds=[0],
                  batch_size=2)
    seen = []
    from nfaudio.training import trainer

    orig = trainer.fit

    def spy(c, train_set, val_set, out_dir, **kw):
        seen.append((sorted(train_set.df["group"].unique()), train_set.df["primary_label"].value_counts().to_dict(),
                     c.model.pretrained, c.train.select, c.train.epochs))
        return orig(c, train_set, val_set, out_dir, **kw)

    monkeypatch.setattr(trainer, "fit", spy)
    report = small_data.run(cfg, tmp_path / "sd", **kwargs)
    rows = json.loads((tmp_path / "sd" / "results.json").read_text())
    nets = [r for r in rows if r["model"] != small_data.BASELINE]
    assert [(r["clips_per_class"], r["n_train"], r["n_val"], r["status"]) for r in nets] == [(1, 3, 12, "ok"),
                                                                                              (2, 6, 12, "ok")]
    # 5 steps: 3 clips at batch 2 are 1 step an epoch (5 epochs), 6 clips 3 steps an epoch (2 epochs, 6 steps)
    assert [s[-1] for s in seen] == [5, 2]
    assert [(r["epochs_run"], r["steps_run"]) for r in nets] == [(5, 5), (2, 6)]
    history = (tmp_path / "sd" / "results.json").read_text()
    assert history.count('"logmel_logreg"') == 2  # the baseline once per (size, fold)
    from nfaudio.data import load_data
    from nfaudio.folds import assign_folds

    manifest = load_data(cfg)
    folds = assign_folds(manifest, 3, "logo", "group", cfg.train.seed)
    (held_out,) = set(manifest.df["group"][folds == 0])  # fold 0 is one speaker, its 12 clips the validation set
    assert all(held_out not in groups for groups, *_ in seen)
    assert seen[1][1] == {"low": 2, "mid": 2, "high": 2}
    assert all(pretrained is False and select == "last" for *_, pretrained, select, _ in seen)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["chance"] == pytest.approx(1 / 3) for r in rows)
    assert "Best setting per size" in report.read_text()
    assert "| 2 | nfaudio_tiny / 0.003 / 5 / none |" in report.read_text()  # best net vs the baseline
    n_calls = len(seen)
    small_data.run(cfg, tmp_path / "sd", **kwargs)
    assert len(seen) == n_calls  # resumed: nothing retrained


def test_small_data_baseline_is_logmel_statistics_and_logistic_regression(tone_manifest, tmp_path):
    """The baseline's features against a hand computation (the frontend clip by clip, numpy statistics) and its
    accuracy against the same scikit-learn pipeline fitted by hand on the same clips."""
    import numpy as np
    import soundfile as sf
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from nfaudio.data import AudioDataset, load_data
    from nfaudio.folds import assign_folds
    from nfaudio.frontend import LogMel
    from nfaudio.study import small_data
    from nfaudio.training.build import frontend_kwargs

    cfg = _tone_recipe(tone_manifest)
    manifest = load_data(cfg)
    ds = AudioDataset(manifest, sample_rate=8000, duration=0.5, train=False, crop="start")
    feats = small_data.logmel_features(cfg, ds, batch_size=5)
    frontend = LogMel(**frontend_kwargs(cfg))
    for i, path in enumerate(manifest.df["path"]):
        spec = frontend(torch.from_numpy(sf.read(path, dtype="float32")[0])[None])[0, 0].double().numpy()
        np.testing.assert_allclose(feats[i], np.r_[spec.mean(1), spec.std(1, ddof=1)], rtol=1e-5, atol=1e-5)

    small_data.run(cfg, tmp_path / "sd", sizes=[2], models=["nfaudio_tiny"], lrs=[3e-3], steps=[1],
                   augments=["none"], folds=[1], batch_size=2)
    (row,) = [r for r in json.loads((tmp_path / "sd" / "results.json").read_text()) if r["model"] == "logmel_logreg"]
    folds = np.asarray(assign_folds(manifest, cfg.cv.n_folds, "logo", "group", cfg.train.seed))
    pool = np.flatnonzero(folds != 1)
    train = pool[small_data.nested_subset(manifest.df["primary_label"].iloc[pool].tolist(), 2, cfg.train.seed + 1)]
    val = np.flatnonzero(folds == 1)
    labels = manifest.df["primary_label"].to_numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(feats[train], labels[train])
    assert row["n_train"] == len(train) == 6
    assert row["accuracy"] == pytest.approx(float(np.mean(clf.predict(feats[val]) == labels[val])))


def _tone_folder(root: Path, per_class: int, sr: int = 16000, seconds: float = 1.0) -> Path:
    """Folder-per-class tree of four noisy tone classes (clips shorter than the crop are zero-padded)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(1)
    t = np.arange(int(sr * seconds)) / sr
    for label, freq in (("a", 300.0), ("b", 900.0), ("c", 2000.0), ("d", 5000.0)):
        for i in range(per_class):
            f = freq * (1 + 0.03 * rng.standard_normal())
            onset = rng.uniform(0, 0.5)
            y = np.where(t >= onset, 0.2 * np.sin(2 * np.pi * f * t), 0.0) + 0.1 * rng.standard_normal(len(t))
            path = root / label / f"{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), y.astype(np.float32), sr)
    return root


def test_folder_clips_scratch_resolves_to_the_from_scratch_settings():
    from nfaudio.config import load_config

    old, new = load_config("folder_clips"), load_config("folder_clips_scratch")
    assert (new.model.name, new.model.pretrained) == ("nfaudio_small", False)
    assert new.optim.lr > old.optim.lr
    assert new.train.early_stop_patience is None
    assert new.train.select == "last"
    assert new.train.batch_size < old.train.batch_size
    assert new.train.epochs >= old.train.epochs
    assert new.train.min_steps == 1000  # the step budget small-data measured (README)
    # everything about the data and the input is the generic recipe's
    assert (new.data, new.audio, new.frontend, new.cv, new.loss) == (old.data, old.audio, old.frontend, old.cv,
                                                                     old.loss)


@pytest.mark.slow
def test_folder_clips_scratch_learns_from_a_few_clips_where_the_old_settings_do_not(tmp_path):
    from nfaudio.config import load_config
    from nfaudio.training import train_from_config

    root = _tone_folder(tmp_path / "clips", per_class=10)
    common = [f"data.root={root}", "data.num_workers=0", "audio.duration=1.0", "audio.sample_rate=16000",
              "frontend.fmax=8000", "frontend.n_mels=64", "train.progress=false", "model.name=nfaudio_small"]
    old = train_from_config(load_config("folder_clips", [*common, "model.pretrained=false"]), tmp_path / "old")
    new = train_from_config(load_config("folder_clips_scratch", common), tmp_path / "new")
    old_acc, new_acc = old.history[-1]["val_score"], new.history[-1]["val_score"]
    print(f"old settings {old_acc:.3f} after {len(old.history)} epochs; new {new_acc:.3f}")
    assert new_acc >= 0.75, new_acc  # 4 classes: chance is 0.25
    assert new_acc - old_acc >= 0.25, (old_acc, new_acc)


@pytest.mark.parametrize("study", ["bn-cost", "compare", "small-data"])
@pytest.mark.parametrize(("flags", "expected"), [
    ([], None),  # the study's default
    (["--models", "full"], "FULL"),
    (["--full"], "FULL"),
    (["--full", "--models", "nfaudio_tiny"], ["nfaudio_tiny"]),  # a named list wins over --full
    (["--models", "nfaudio_tiny,nfaudio_small"], ["nfaudio_tiny", "nfaudio_small"]),
])
def test_study_cli_models_full_expands_in_every_study(tone_manifest, tmp_path, monkeypatch, study, flags, expected):
    import importlib

    from nfaudio import config
    from nfaudio.cli import main
    from nfaudio.study import STUDIES

    module = importlib.import_module(f"nfaudio.study.{STUDIES[study]}")
    seen = {}
    monkeypatch.setattr(config, "load_config", lambda *a, **k: _tone_recipe(tone_manifest))
    monkeypatch.setattr(module, "run", lambda cfg, out, **kw: seen.update(kw) or out / "report.md")
    assert main(["study", study, "--recipe", "x.yaml", "--out", str(tmp_path / "s"), *flags]) == 0
    assert seen["models"] == (list(module.FULL_MODELS) if expected == "FULL" else expected)
    assert "full" not in (seen["models"] or [])
