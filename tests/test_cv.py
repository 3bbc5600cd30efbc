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


# ----------------------------------------------------------------------------- folds in parallel
def test_a_fold_claim_is_exclusive_and_a_dead_holders_claim_is_taken_over(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from nfaudio.rundir import RunDir

    fold = RunDir(tmp_path / "fold0")
    assert fold.claim() is None  # ours
    holder = fold.claim()  # a second claim, even by the same process, is refused
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    fold.release()
    assert not fold.file(RunDir.CLAIM).exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    fold.file(RunDir.CLAIM).write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout)}))
    assert fold.claim() is None  # its process has exited: taken over
    fold.release()
    fold.file(RunDir.CLAIM).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert fold.claim()["host"] == "elsewhere"  # another host's claim is assumed alive
    fold.release()  # not ours: kept
    assert fold.file(RunDir.CLAIM).exists()


def _cv_cli(recipe, out, *args):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "nfaudio", "--quiet", "cv", "--recipe", str(recipe), "--out",
                             str(out), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_parallel_fold_processes_share_folds_and_merge(tiny_birdclef, tmp_path):
    import subprocess
    import sys

    from nfaudio.config import dump_config
    from nfaudio.rundir import RunDir

    recipe = tmp_path / "r.yaml"
    dump_config(_cfg(tiny_birdclef.root, threads=1), recipe)
    out = tmp_path / "cv"
    # a live process on this host holds fold 2: a process given fold 2 skips it and says who holds it
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        RunDir(out / "fold2").create().file(RunDir.CLAIM).write_text(
            json.dumps({"host": __import__("socket").gethostname(), "pid": holder.pid}))
        procs = [_cv_cli(recipe, out, "--folds", "0"), _cv_cli(recipe, out, "--folds", "1"),
                 _cv_cli(recipe, out, "--folds", "2")]  # started together on one --out
        results = [p.communicate(timeout=500) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [r[1][-2000:] for r in results]
        assert f"pid {holder.pid}" in results[2][1]
        assert "no fold finished yet" in results[2][0]
    finally:
        holder.kill()
        holder.wait()
    run = RunDir(out)
    assert [k for k in (0, 1, 2) if run.fold(k).is_done()] == [0, 1]
    assert not run.fold(0).file(RunDir.CLAIM).exists()  # released when the fold finished
    merge = subprocess.run([sys.executable, "-m", "nfaudio", "--quiet", "cv", "--merge", "--out", str(out)],
                           capture_output=True, text=True, check=True)
    assert "folds [2] are not finished yet" in merge.stdout
    metrics = json.loads((out / RunDir.METRICS).read_text())
    assert (metrics["folds"], metrics["unfinished_folds"]) == ([0, 1], [2])
    oof = pd.read_csv(out / RunDir.OOF)
    folds = pd.read_csv(out / RunDir.FOLDS).set_index("row_id")["fold"]
    assert sorted(oof["row_id"]) == sorted(folds.index[folds.isin([0, 1])])
    # the holder is gone now: the same command trains fold 2, and every fold is in the merged results
    last = _cv_cli(recipe, out, "--folds", "2")
    assert last.wait(timeout=500) == 0, last.stderr.read()[-2000:]
    metrics = json.loads((out / RunDir.METRICS).read_text())
    assert (metrics["folds"], metrics["unfinished_folds"]) == ([0, 1, 2], [])
    assert len(pd.read_csv(out / RunDir.OOF)) == len(folds)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_cv_killed_mid_fold_resumes_to_the_uninterrupted_results(tiny_birdclef, tmp_path):
    import os
    import signal
    import time

    import torch

    from nfaudio.config import dump_config
    from nfaudio.rundir import RunDir

    recipe = tmp_path / "r.yaml"
    dump_config(_cfg(tiny_birdclef.root, epochs=4), recipe)
    pinned = ("--set", "train.threads=1")
    clean = _cv_cli(recipe, tmp_path / "clean", *pinned)
    assert clean.wait(timeout=600) == 0, clean.stderr.read()[-2000:]

    out = tmp_path / "killed"
    victim = _cv_cli(recipe, out, *pinned)
    fold1 = RunDir(out / "fold1")
    deadline = time.monotonic() + 600
    while not fold1.last.is_file() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    # killed in the middle of fold 1: fold 0 done, fold 1 has a state after >= 1 of its 4 epochs, fold 2 untouched
    assert RunDir(out / "fold0").is_done()
    assert not fold1.is_done()
    assert not (out / "fold2").exists()
    assert torch.load(fold1.last, map_location="cpu", weights_only=False)["epoch"] < 3  # 0-based: epochs left
    assert not (out / RunDir.METRICS).exists()

    again = _cv_cli(recipe, out, *pinned)  # the same command resumes
    assert again.wait(timeout=600) == 0, again.stderr.read()[-2000:]
    assert (out / RunDir.OOF).read_bytes() == (tmp_path / "clean" / RunDir.OOF).read_bytes()
    clean_metrics = json.loads((tmp_path / "clean" / RunDir.METRICS).read_text())
    assert json.loads((out / RunDir.METRICS).read_text()) == clean_metrics
