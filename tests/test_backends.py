"""Tests for nfaudio.backends: activations, the torch scorer's ensemble mean, and the onnxruntime / openvino
scorers against the torch one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FRONTEND, SCORE_SR

from nfaudio.backends import TorchScorer, activate
from nfaudio.cli import main
from nfaudio.models import create_model, load_model
from nfaudio.predict import Predictor

SR = SCORE_SR

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_activate_matches_torch() -> None:
    logits = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32) * 3
    np.testing.assert_allclose(activate(logits, "sigmoid"), torch.sigmoid(torch.from_numpy(logits)), atol=1e-6)
    np.testing.assert_allclose(activate(logits, "softmax"), torch.softmax(torch.from_numpy(logits), -1), atol=1e-6)


def test_activate_keeps_the_input_kind_and_refuses_unknown_names() -> None:
    logits = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    out = activate(logits, "sigmoid")
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    out = activate(logits.numpy(), "softmax")
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1 / (1 + np.e ** 2), np.e ** 2 / (1 + np.e ** 2)]], rtol=1e-6)
    with pytest.raises(ValueError, match="activation must be one of"):
        activate(logits, "relu")


def test_torch_scorer_is_the_mean_of_its_models_in_eval_mode(cv_dir: Path) -> None:
    models = [load_model(cv_dir / f"fold{k}" / "best.pt") for k in (0, 1)]
    waves = (np.random.default_rng(0).standard_normal((3, SR)) * 0.2).astype(np.float32)
    with torch.inference_mode():
        each = {act: [activate(m.eval()(torch.from_numpy(waves)).clip, act).numpy() for m in models]
                for act in ("sigmoid", "softmax")}
    assert not np.allclose(*each["sigmoid"])
    models[1].train()  # handed over in training mode (SpecAugment p=1, dropout): scored in eval mode, left as given
    for act in ("sigmoid", "softmax"):
        got = TorchScorer(models, act, device="cpu")(waves)
        assert got.dtype == np.float32
        assert got.shape == (3, 3)
        np.testing.assert_allclose(got, (each[act][0] + each[act][1]) / 2, atol=1e-6)
    assert [m.training for m in models] == [False, True]
    assert TorchScorer(models, device="cpu").sample_rate == SR
    with pytest.raises(ValueError, match="at least one model"):
        TorchScorer([])
    with pytest.raises(ValueError, match="activation must be one of"):
        TorchScorer(models, "relu")
    other_rate = create_model("nfaudio_tiny", 3, frontend={**FRONTEND, "sample_rate": 8000, "fmax": 4000.0})
    with pytest.raises(ValueError, match=r"share one sample rate, got \[8000, 16000\]"):
        TorchScorer([models[0], other_rate])


# ----------------------------------------------------------------------------- runtimes (exported models)
def test_onnxruntime_backend_equals_torch(ckpt: Path, exported: Path, audio_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    ref = Predictor.from_checkpoint(ckpt, num_workers=0, batch_size=4).predict([audio_dir])
    for model in (exported, ckpt):  # an exported file, or a checkpoint exported on the fly
        got = Predictor.from_checkpoint(model, backend="onnxruntime", num_workers=0, batch_size=4,
                                        threads=1).predict([audio_dir])
        pd.testing.assert_index_equal(got.index, ref.index)
        np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="ONNX models need"):
        Predictor.from_checkpoint(exported)
    outs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        args = ["predict", str(ckpt), str(audio_dir), "--out", str(out), "--backend", backend, "--threads", "1",
                "--format", "submission,table,detections", "--threshold", "0.3", "--no-progress"]
        assert main(args) == 0
        outs[backend] = {n: pd.read_csv(out / n) for n in ("submission.csv", "scores.csv", "detections.csv")}
    for name, frame in outs["torch"].items():
        other = outs["onnxruntime"][name]
        assert list(frame.columns) == list(other.columns)
        assert len(frame) == len(other)
        numeric = frame.select_dtypes("number").columns
        pd.testing.assert_frame_equal(frame.drop(columns=numeric), other.drop(columns=numeric))
        np.testing.assert_allclose(frame[numeric].to_numpy(), other[numeric].to_numpy(), atol=1e-5)


def test_openvino_backend_equals_torch(ckpt: Path, exported: Path, audio_dir: Path) -> None:
    pytest.importorskip("openvino")
    ref = Predictor.from_checkpoint(ckpt, num_workers=0).predict([audio_dir])
    got = Predictor.from_checkpoint(exported, backend="openvino", num_workers=0, threads=1).predict([audio_dir])
    pd.testing.assert_index_equal(got.index, ref.index)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), atol=1e-4)


_FIFO_FREE = """
import gc, os, signal, sys
from nfaudio.backends import OpenVinoScorer
scorers = [OpenVinoScorer([sys.argv[1]], "sigmoid", 16000, threads=1) for _ in range(2)]
scorers.pop(0)  # freed in creation order: two Cores' CPU plugins would leave an unmapped signal stack
scorers.pop(0)
gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handled"))
os.kill(os.getpid(), signal.SIGUSR1)
"""


def test_openvino_scorers_share_one_core_so_freeing_them_keeps_signals_working(exported: Path) -> None:
    """With one ``ov.Core`` per scorer, this script died with SIGSEGV (-11) at the signal, as the full suite did."""
    pytest.importorskip("openvino")
    proc = subprocess.run([sys.executable, "-c", _FIFO_FREE, str(exported)], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "handled"


# ----------------------------------------------------------------------------- shared frontend
@pytest.fixture(scope="module")
def two_groups(cv_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """fold0, fold1 (same frontend) and a model with 24 mel bands (another frontend), all three classes."""
    import shutil

    from conftest import CLASSES, recipe_model

    from nfaudio.models import save_model

    root = tmp_path_factory.mktemp("two_groups")  # our own copies: the export cache writes next to them
    paths = [shutil.copy(cv_dir / f"fold{k}" / "best.pt", root / f"fold{k}.pt") for k in (0, 1)]
    other = recipe_model(len(CLASSES), {**FRONTEND, "n_mels": 24}, seed=2)
    path = save_model(other, root / "mels24.pt", classes=CLASSES, duration=1.0, activation="sigmoid")
    return [Path(p) for p in paths] + [path]


def test_torch_ensemble_computes_each_frontend_once_and_equals_the_unshared_one(two_groups: list[Path]) -> None:
    from nfaudio.backends import frontend_groups

    models = [load_model(p) for p in two_groups]
    assert frontend_groups(models) == [[0, 1], [2]]
    calls = [0, 0, 0]
    for i, m in enumerate(models):
        m.frontend.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    waves = (np.random.default_rng(3).standard_normal((5, SR)) * 0.2).astype(np.float32)
    shared = TorchScorer(models, device="cpu")(waves)
    assert calls == [1, 0, 1]  # fold1 used fold0's spectrogram; the 24-mel model its own
    unshared = TorchScorer(models, device="cpu", share_frontend=False)(waves)
    assert calls == [2, 1, 2]
    np.testing.assert_allclose(shared, unshared, atol=1e-6, rtol=0)
    with torch.inference_mode():
        by_hand = np.mean([torch.sigmoid(m.eval()(torch.from_numpy(waves)).clip).numpy() for m in models], axis=0)
    np.testing.assert_allclose(shared, by_hand, atol=1e-6, rtol=0)


def test_frontends_with_equal_settings_but_other_buffers_are_not_shared(cv_dir: Path) -> None:
    from nfaudio.backends import frontend_groups

    models = [load_model(cv_dir / f"fold{k}" / "best.pt") for k in (0, 1)]
    with torch.no_grad():
        models[1].frontend.mel_fb[0, 0] += 1.0
    assert frontend_groups(models) == [[0], [1]]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtime_ensemble_shares_one_frontend_graph_per_group(two_groups: list[Path], backend: str) -> None:
    pytest.importorskip(backend)
    pytest.importorskip("onnx")
    from nfaudio.predict import load_runtime_scorer

    waves = (np.random.default_rng(4).standard_normal((5, SR)) * 0.2).astype(np.float32)
    shared, metas = load_runtime_scorer(two_groups, backend, threads=1)
    assert [members for _, members in shared.groups] == [[0, 1], [2]]
    assert [m["frontend"]["n_mels"] for m in metas] == [32, 32, 24]
    unshared, _ = load_runtime_scorer(two_groups, backend, threads=1, share_frontend=False)
    assert [members for _, members in unshared.groups] == [[0], [1], [2]]
    np.testing.assert_allclose(shared(waves), unshared(waves), atol=1e-4, rtol=0)
    reference = TorchScorer([load_model(p) for p in two_groups], device="cpu", share_frontend=False)(waves)
    np.testing.assert_allclose(shared(waves), reference, atol=1e-4, rtol=0)
