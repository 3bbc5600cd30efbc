"""Tests for nfaudio.training.distributed: sharded sampling by hand, and real torchrun runs on the CPU (gloo) that
must match the single-process run with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_recipe

from nfaudio.config import dump_config
from nfaudio.rundir import RunDir
from nfaudio.training.distributed import World, shard


@pytest.mark.parametrize("n", [8, 9])
def test_shards_interleave_into_the_single_process_permutation(n: int) -> None:
    loader = torch.utils.data.DataLoader(range(n), shuffle=True, generator=torch.Generator().manual_seed(7))
    perm = [int(x) for x in loader]  # the order a single process trains in
    shards = [shard(n, World(r, 2), torch.Generator().manual_seed(7)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    merged = [i for pair in zip(*shards) for i in pair]
    assert merged[:n] == perm  # consecutive per-rank batches cover consecutive global batches
    assert merged[n:] == perm[:len(merged) - n]  # padding repeats the first indices
    assert shard(n, World(), torch.Generator().manual_seed(7)) == perm


def test_weighted_shards_split_one_global_weighted_draw() -> None:
    weights = torch.tensor([0.1, 1.0, 5.0, 0.5, 2.0, 1.0], dtype=torch.double)
    sampler = torch.utils.data.WeightedRandomSampler(weights, 6, generator=torch.Generator().manual_seed(3))
    draw = [int(x) for x in torch.utils.data.DataLoader(range(6), sampler=sampler)]
    shards = [shard(6, World(r, 3), torch.Generator().manual_seed(3), weights) for r in range(3)]
    assert [shards[k % 3][k // 3] for k in range(6)] == draw


def _recipe(root: Path, path: Path, epochs: int = 2) -> Path:
    # no random augmentation, mixup, dropout or drop-path: the runs must see the same arithmetic
    cfg = tiny_recipe(root, train={"epochs": epochs, "threads": 1, "seed": 11}, augment={"specaug_p": 0.0})
    dump_config(cfg, path)
    return path


def _run(args: list[str], nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "nfaudio", "--quiet", *args]
    else:
        cmd = [sys.executable, "-m", "nfaudio", "--quiet", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / RunDir.LAST, map_location="cpu", weights_only=False)["model"]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_two_gloo_processes_train_like_one_process_with_the_global_batch(tiny_birdclef, tmp_path: Path) -> None:
    recipe = _recipe(tiny_birdclef.root, tmp_path / "r.yaml")
    one, two = tmp_path / "one", tmp_path / "two"
    _run(["train", "--recipe", str(recipe), "--out", str(one), "--set", "train.batch_size=4"], 1, tmp_path)
    out = _run(["train", "--recipe", str(recipe), "--out", str(two), "--set", "train.batch_size=2"], 2, tmp_path)
    assert out.stdout.count("best macro_auc") == 1  # rank 0 alone reports
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
    # validation was sharded and gathered: the same loss and metric as the one-process run, on the whole fold
    h1, h2 = pd.read_csv(one / RunDir.HISTORY), pd.read_csv(two / RunDir.HISTORY)
    assert len(h2) == 2  # one writer: two epochs, two rows
    np.testing.assert_allclose(h2["val_loss"], h1["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(h2["val_score"], h1["val_score"], atol=1e-6)
    np.testing.assert_allclose(h2["train_loss"], h1["train_loss"], rtol=1e-4)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert RunDir(two).read_info()["world_size"] == 2
    # last.pt resumes with another world size: one process continues the two-process run
    _run(["train", "--recipe", str(recipe), "--out", str(two), "--resume", "--set", "train.epochs=3",
          "--set", "train.batch_size=4"], 1, tmp_path)
    assert list(pd.read_csv(two / RunDir.HISTORY)["epoch"]) == [1, 2, 3]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_cv_under_torchrun_gathers_out_of_fold_rows(tiny_birdclef, tmp_path: Path) -> None:
    recipe = _recipe(tiny_birdclef.root, tmp_path / "r.yaml", epochs=1)
    one, two = tmp_path / "one", tmp_path / "two"
    _run(["cv", "--recipe", str(recipe), "--out", str(one), "--folds", "0", "--set", "train.batch_size=4"], 1,
         tmp_path)
    _run(["cv", "--recipe", str(recipe), "--out", str(two), "--folds", "0", "--set", "train.batch_size=2"], 2,
         tmp_path)
    o1, o2 = pd.read_csv(one / RunDir.OOF), pd.read_csv(two / RunDir.OOF)
    assert list(o2["row_id"]) == list(o1["row_id"])  # every validation row once, in the one-process order
    numeric = o1.columns[2:]
    np.testing.assert_allclose(o2[numeric].to_numpy(), o1[numeric].to_numpy(), atol=1e-5)
    assert (two / RunDir.METRICS).is_file()
    assert pd.read_csv(two / RunDir.FOLDS).equals(pd.read_csv(one / RunDir.FOLDS))


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_batchnorm_backbone_on_the_cpu_says_why_it_keeps_per_process_statistics(tiny_birdclef,
                                                                                   tmp_path: Path) -> None:
    recipe = _recipe(tiny_birdclef.root, tmp_path / "r.yaml", epochs=1)
    out = _run(["train", "--recipe", str(recipe), "--out", str(tmp_path / "bn"), "--set", "model.name=resnet10t",
                "--set", "train.batch_size=2", "--set", "train.max_steps_per_epoch=1"], 2, tmp_path)
    assert out.stderr.count("SyncBatchNorm cannot run") == 1  # said once, by rank 0
    assert (tmp_path / "bn" / RunDir.BEST).is_file()
