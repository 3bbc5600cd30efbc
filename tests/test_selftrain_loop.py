"""Noisy-student rounds: the round folders, the students' settings, resume of finished and killed rounds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_recipe

from nfaudio.config import dump_config
from nfaudio.selftrain.loop import default_student_overrides, self_train
from nfaudio.synth import SynthConfig, TargetDomain, generate_dataset

SHIFTED = SynthConfig(n_species=3, clips_per_species=4, clip_seconds=(1.0, 2.0), n_soundscapes=1,
                      soundscape_seconds=8.0, window_seconds=2.0, sample_rate=16000, seed=5, authors_per_species=2,
                      target_domain=TargetDomain(), n_unlabeled_soundscapes=2)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("shifted"), SHIFTED)


def _recipe(root):
    return tiny_recipe(root, audio={"duration": 2.0}, train={"epochs": 2, "threads": 1},
                       pseudo={"mode": "mix", "mix_weight": [0.3, 0.5]})


def test_rounds_write_their_folders_and_resume(shifted, tmp_path) -> None:
    cfg = _recipe(shifted.root)
    table = self_train(cfg, [shifted.unlabeled], tmp_path, rounds=1, power=2.0,
                       eval_audio=[shifted.root / "test_soundscapes"], eval_labels=shifted.soundscape_labels,
                       predict_kw={"num_workers": 0})
    assert table["round"].tolist() == [0, 1]
    for column in ("val_score", "macro_auc", "padded_cmap"):
        assert table[column].between(0, 1).all(), column
    assert table["pseudo_kept"].tolist() == [0, 8]  # 2 unlabelled soundscapes x 4 windows of 2 s
    for name in ("rounds.csv", "rounds.json", "rounds.png"):
        assert (tmp_path / name).is_file()
    student = yaml.safe_load((tmp_path / "round1" / "model" / "config.yaml").read_text())
    teacher = yaml.safe_load((tmp_path / "round0" / "model" / "config.yaml").read_text())
    assert student["pseudo"]["labels"] == [str(tmp_path / "round1" / "pseudo")]
    assert teacher["pseudo"]["labels"] == []
    assert student["model"]["drop_path_rate"] == pytest.approx((teacher["model"]["drop_path_rate"] or 0.0) + 0.1)
    assert student["augment"]["specaug_p"] >= 0.5
    labels = pd.read_csv(tmp_path / "round1" / "pseudo" / "pseudo_labels.csv")
    assert (labels["end_s"] - labels["start_s"]).eq(2.0).all()  # the recipe's duration is the window
    # more rounds later: the finished ones are kept as they are
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "round0" / "model" / "best.pt",
                                               tmp_path / "round1" / "done.json")}
    more = self_train(cfg, [shifted.unlabeled], tmp_path, rounds=2, power=2.0,
                      eval_audio=[shifted.root / "test_soundscapes"], eval_labels=shifted.soundscape_labels,
                      predict_kw={"num_workers": 0})
    assert more["round"].tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(more.iloc[:2], table)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert (tmp_path / "round2" / "pseudo" / "pseudo_labels.json").is_file()


def test_student_overrides_and_errors(shifted, tmp_path) -> None:
    cfg = _recipe(shifted.root)
    assert default_student_overrides(cfg) == ["model.drop_path_rate=0.1", "augment.specaug_p=0.5"]
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        self_train(cfg, [shifted.unlabeled], tmp_path, rounds=-1)
    with pytest.raises(ValueError, match="both eval_audio and eval_labels"):
        self_train(cfg, [shifted.unlabeled], tmp_path, rounds=0, eval_audio=[shifted.root])


@pytest.mark.integration
def test_self_train_killed_in_a_round_resumes_to_the_same_rounds(shifted, tmp_path) -> None:
    """kill -9 of `nfaudio self-train` while round 1's student trains, then the same command: the rounds' figures
    equal an uninterrupted run's."""
    recipe = tmp_path / "recipe.yaml"
    dump_config(_recipe(shifted.root), recipe)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "nfaudio", "self-train", "--recipe", str(recipe), "--unlabelled",
                str(shifted.unlabeled), "--rounds", "1", "--out", str(out), "--power", "1.5", "--workers", "0",
                "--eval-audio", str(shifted.root / "test_soundscapes"), "--eval-labels",
                str(shifted.soundscape_labels)]

    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = tmp_path / "killed" / "round1" / "model" / "last.pt"
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before round 1's student had trained an epoch"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "round1" / "done.json").exists()
    subprocess.run(command(tmp_path / "killed"), env=env, check=True, capture_output=True)
    whole, resumed = (pd.read_csv(tmp_path / d / "rounds.csv").drop(columns="seconds") for d in ("whole", "killed"))
    pd.testing.assert_frame_equal(resumed, whole)
    assert (tmp_path / "killed" / "round1" / "pseudo" / "pseudo_labels.csv").read_bytes() == \
        (tmp_path / "whole" / "round1" / "pseudo" / "pseudo_labels.csv").read_bytes()
