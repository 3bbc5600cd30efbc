"""Tests for nfaudio.predict: windows, values, ensembling, TTA, smoothing, worker processes, bad files, and the
defaults a run directory gives ``nfaudio predict``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CLASSES, FRONTEND, SCORE_SR, recipe_model, save_tiny_model, write_tone

from nfaudio.audio import load, window_starts
from nfaudio.cli import main
from nfaudio.inputs import list_audio
from nfaudio.models import load_model
from nfaudio.predict import Predictor, smooth_neighbours

SR = SCORE_SR

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference(ckpt: Path, windows: np.ndarray) -> np.ndarray:
    model = load_model(ckpt)
    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(windows)).clip).numpy()


# ----------------------------------------------------------------------------- windows and values
@pytest.mark.parametrize(("hop", "last"), [(1.0, "pad"), (1.0, "drop"), (1.0, "shift"), (0.5, "pad"), (0.75, "shift")])
def test_windows_follow_hop_and_last_policy(ckpt: Path, audio_dir: Path, hop: float, last: str) -> None:
    path = audio_dir / "rec_a.wav"  # 3.5 s: pad -> a zero-padded 4th window, drop -> 3, shift -> one at 2.5 s
    pred = Predictor.from_checkpoint(ckpt, hop=hop, last=last, batch_size=3, num_workers=0)
    df = pred.predict_file(path)
    y, _ = load(path, SR)
    starts = window_starts(len(y), SR, int(hop * SR), last)
    np.testing.assert_allclose(df.index.get_level_values("start_s"), starts / SR)
    np.testing.assert_allclose(df.index.get_level_values("end_s"), starts / SR + 1.0)
    padded = np.pad(y, (0, SR))
    windows = np.stack([padded[s:s + SR] for s in starts])
    np.testing.assert_allclose(df.to_numpy(), _reference(ckpt, windows), atol=1e-5)
    assert list(df.columns) == CLASSES
    assert df.index.names == ["file", "start_s", "end_s"]


def test_overlap_is_window_minus_hop(ckpt: Path) -> None:
    assert Predictor.from_checkpoint(ckpt, overlap=0.25, num_workers=0).hop == 0.75
    with pytest.raises(ValueError, match="hop or overlap"):
        Predictor.from_checkpoint(ckpt, hop=0.5, overlap=0.25)


def test_workers_give_same_scores_in_input_order(ckpt: Path, audio_dir: Path) -> None:
    # the same thread count on both sides (torch's sums may round differently with another count), pinned so the
    # comparison does not depend on this machine's cores
    inline = Predictor.from_checkpoint(ckpt, batch_size=2, num_workers=0, threads=1).predict([audio_dir])
    pooled = Predictor.from_checkpoint(ckpt, batch_size=2, num_workers=2, threads=1).predict([audio_dir])
    pd.testing.assert_frame_equal(inline, pooled, check_exact=True)
    files = list(dict.fromkeys(inline.index.get_level_values("file")))
    assert files == [str(f) for f in list_audio([audio_dir])]
    assert (inline.groupby(level="file", sort=False).size().to_numpy() == [4, 2, 3]).all()


def test_predictor_leaves_the_callers_model_as_it_found_it(ckpt: Path, audio_dir: Path) -> None:
    model = recipe_model(len(CLASSES), FRONTEND, seed=4)  # training mode, SpecAugment p=1, dropout, drop-path
    modes = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = Predictor(model, CLASSES, window=1.0, num_workers=0, device="cpu")
    first = predictor.predict([audio_dir / "rec_a.wav"])
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # scored in eval mode (no random masks or dropout): repeatable, and equal to the eval-mode model
    np.testing.assert_array_equal(predictor.predict([audio_dir / "rec_a.wav"]).to_numpy(), first.to_numpy())
    y, _ = load(audio_dir / "rec_a.wav", SR)
    padded = np.pad(y, (0, SR))
    windows = np.stack([padded[s:s + SR] for s in window_starts(len(y), SR, SR, "pad")])
    with torch.inference_mode():
        ref = torch.sigmoid(model.eval()(torch.from_numpy(windows)).clip).numpy()
    np.testing.assert_allclose(first.to_numpy(), ref, atol=1e-6)


def test_factory_rebuilds_the_predictor_in_another_process(ckpt: Path, audio_dir: Path) -> None:
    import pickle

    pred = Predictor.from_checkpoint(ckpt, hop=0.5, batch_size=3, num_workers=0, threads=1)
    rebuilt = pickle.loads(pickle.dumps(pred.factory()))()  # what a Dask worker receives and calls
    assert rebuilt is not pred
    assert rebuilt.fingerprint() == pred.fingerprint()
    assert rebuilt.checkpoint_args == pred.checkpoint_args == (str(ckpt.resolve()), {
        "backend": "torch", "device": "auto", "threads": 1, "precision": "fp32", "share_frontend": True, "int8": None,
        "hop": 0.5, "batch_size": 3, "num_workers": 0})
    path = audio_dir / "rec_a.wav"
    pd.testing.assert_frame_equal(rebuilt.predict_file(path), pred.predict_file(path), check_exact=True)
    other = pred.factory(batch_size=5, num_workers=2)()
    assert (other.batch_size, other.num_workers, other.hop) == (5, 2, 0.5)
    in_memory = Predictor(load_model(ckpt), CLASSES, window=1.0, num_workers=0)
    assert in_memory.checkpoint_args is None
    with pytest.raises(ValueError, match="in-memory models"):
        in_memory.factory()


def test_ensemble_is_mean_of_members(cv_dir: Path, audio_dir: Path) -> None:
    inputs = [audio_dir / "rec_a.wav"]
    both = Predictor.from_checkpoint(cv_dir, num_workers=0).predict(inputs)
    each = [Predictor.from_checkpoint(cv_dir / f"fold{k}", num_workers=0).predict(inputs) for k in (0, 1)]
    np.testing.assert_allclose(both.to_numpy(), (each[0].to_numpy() + each[1].to_numpy()) / 2, atol=1e-6)
    assert not np.allclose(each[0].to_numpy(), each[1].to_numpy())


def test_time_shift_tta_by_hand(ckpt: Path, audio_dir: Path) -> None:
    path = audio_dir / "rec_a.wav"
    df = Predictor.from_checkpoint(ckpt, tta_shifts=[-0.5, 0.5], batch_size=6, num_workers=0).predict_file(path)
    y, _ = load(path, SR)
    half = SR // 2
    padded = np.concatenate([np.zeros(half, np.float32), y, np.zeros(2 * SR, np.float32)])  # zeros outside the file
    expected = []
    for start in (0, 1, 2, 3):
        wins = np.stack([padded[half + start * SR + d:half + start * SR + d + SR] for d in (-half, 0, half)])
        expected.append(_reference(ckpt, wins).mean(axis=0))
    np.testing.assert_allclose(df.to_numpy(), np.stack(expected), atol=1e-5)
    with pytest.raises(ValueError, match="TTA shifts"):
        Predictor.from_checkpoint(ckpt, tta_shifts=[1.5])


def test_neighbour_smoothing_by_hand(ckpt: Path, audio_dir: Path) -> None:
    p = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(smooth_neighbours(p, 0.25), [[0.75, 0], [0.25, 0.25], [0, 0.75]])
    np.testing.assert_array_equal(smooth_neighbours(p[:1], 0.25), p[:1])
    with pytest.raises(ValueError, match="smoothing"):
        smooth_neighbours(p, 0.6)
    path = audio_dir / "rec_a.wav"
    raw = Predictor.from_checkpoint(ckpt, num_workers=0).predict_file(path).to_numpy()
    smooth = Predictor.from_checkpoint(ckpt, smoothing=0.2, num_workers=0).predict_file(path).to_numpy()
    by_hand = [0.8 * raw[0] + 0.2 * raw[1], *(0.6 * raw[k] + 0.2 * (raw[k - 1] + raw[k + 1]) for k in (1, 2)),
               0.8 * raw[3] + 0.2 * raw[2]]
    np.testing.assert_allclose(smooth, np.stack(by_hand), atol=1e-6)


# ----------------------------------------------------------------------------- files and run defaults
def test_bad_files_go_to_errors_csv_and_exit_status(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    write_tone(data / "good.wav", 2.0)
    (data / "empty.wav").write_bytes(b"")
    (data / "text.wav").write_text("hello, not audio")
    write_tone(data / "short.wav", 0.1)
    full = (audio_dir / "rec_a.wav").read_bytes()
    (data / "truncated.wav").write_bytes(full[: len(full) // 2])
    rc = main(["predict", str(ckpt), str(data), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "2"])
    assert rc == 1
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert [Path(f).name for f in errors.file] == ["empty.wav", "short.wav", "text.wav", "truncated.wav"]
    reasons = dict(zip((Path(f).name for f in errors.file), errors.reason))
    assert "empty" in reasons["empty.wav"]
    assert "too short" in reasons["short.wav"]
    assert "truncated" in reasons["truncated.wav"]
    assert "not readable" in reasons["text.wav"]
    assert list(pd.read_csv(tmp_path / "out" / "submission.csv").row_id) == ["good_1", "good_2"]
    drop = Predictor.from_checkpoint(ckpt, last="drop", min_duration=0.0, num_workers=0)
    assert drop.predict([data / "short.wav"]).empty
    assert "no full 1 s window" in drop.errors_.reason[0]


def test_predict_takes_defaults_from_the_runs_config_and_flags_win(tmp_path: Path, capsys) -> None:
    from nfaudio.config import Config, dump_config

    run = tmp_path / "run"
    save_tiny_model(run / "best.pt", seed=0)
    cfg = Config()
    cfg.predict.hop, cfg.predict.window, cfg.predict.batch_size = 0.25, 0.5, 3
    dump_config(cfg, run / "config.yaml")
    audio = write_tone(tmp_path / "audio" / "x.wav", 2.0)

    assert main(["predict", str(run), str(audio), "--out", str(tmp_path / "a"), "--format", "table",
                 "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "a" / "scores.csv")
    np.testing.assert_allclose(table["start_s"][:3], [0.0, 0.25, 0.5])
    np.testing.assert_allclose(table["end_s"] - table["start_s"], 0.5)

    assert main(["predict", str(run / "best.pt"), str(audio), "--out", str(tmp_path / "b"), "--format", "table",
                 "--window", "1.0", "--hop", "1.0", "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "b" / "scores.csv")
    assert list(table["start_s"]) == [0.0, 1.0]
    capsys.readouterr()
