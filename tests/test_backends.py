"""Tests for nfaudio.backends: activations, the torch scorer's ensemble mean, and the onnxruntime / openvino
scorers against the torch one."""

from __future__ import annotations

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
