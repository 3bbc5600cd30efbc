"""Tests for nfaudio.export: ONNX export (parity with torch, dynamic batch, self-describing metadata) and the
onnxruntime / openvino prediction backends against the torch backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import recipe_model

from nfaudio.backends import activate
from nfaudio.cli import main
from nfaudio.export import export_onnx, read_onnx_metadata
from nfaudio.frontend import LogMel
from nfaudio.models import load_checkpoint, save_model
from nfaudio.predict import Predictor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SR = 16000
CLASSES = ["alpha", "beta", "gamma"]
FRONTEND = dict(sample_rate=SR, n_fft=512, hop_length=160, n_mels=32, fmin=20.0, fmax=8000.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    for k in (0, 1):
        model = recipe_model(len(CLASSES), FRONTEND, seed=k)  # SpecAugment, dropout, drop-path; one step trained
        save_model(model, root / f"fold{k}" / "best.pt", classes=CLASSES, duration=1.0, activation="sigmoid")
    return root


@pytest.fixture(scope="module")
def ckpt(cv_dir: Path) -> Path:
    return cv_dir / "fold0" / "best.pt"


@pytest.fixture(scope="module")
def exported(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for name, seconds, sr in (("a.wav", 3.5, SR), ("b.ogg", 2.2, 22050)):
        t = np.arange(int(seconds * sr)) / sr
        y = 0.3 * np.sin(2 * np.pi * 700 * t) * (t % 1.0 < 0.5) + 0.05 * rng.standard_normal(len(t))
        sf.write(root / name, y.astype(np.float32), sr)
    return root


def test_export_matches_torch_with_dynamic_batch(ckpt: Path, exported: Path) -> None:
    model, _ = load_checkpoint(ckpt)
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["wave"]
    assert [o.name for o in proto.graph.output] == ["clip", "frame"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        wave = torch.randn(batch, SR, generator=torch.Generator().manual_seed(batch)) * 0.2
        with torch.inference_mode():
            ref = model(wave)
        clip, frame = session.run(None, {"wave": wave.numpy()})
        assert clip.shape == (batch, 3)
        assert frame.shape == tuple(ref.frame.shape)
        assert np.abs(clip - ref.clip.numpy()).max() <= 1e-4
        assert np.abs(frame - ref.frame.numpy()).max() <= 1e-4


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("training", [True, False])
def test_export_leaves_the_callers_model_as_it_found_it(training: bool, tmp_path: Path) -> None:
    # the regression: a recipe-built model (SpecAugment p=1, dropout, drop-path) handed over in either mode
    model = recipe_model(len(CLASSES), FRONTEND, seed=7).train(training)
    modes = {name: m.training for name, m in model.named_modules()}
    before = _state(model)
    out = export_onnx(model, tmp_path / "m.onnx", classes=CLASSES, duration=1.0)  # check=True: parity <= 1e-4
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the parity check compared against the eval-mode model: the file scores like model.eval()
    wave = torch.randn(2, SR, generator=torch.Generator().manual_seed(3)) * 0.2
    with torch.inference_mode():
        ref = model.eval()(wave)
    clip, _ = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"wave": wave.numpy()})
    assert np.abs(clip - ref.clip.numpy()).max() <= 1e-4


def test_metadata_makes_the_file_self_describing(ckpt: Path, exported: Path, tmp_path: Path) -> None:
    meta = read_onnx_metadata(exported)
    model, _ = load_checkpoint(ckpt)
    assert meta["classes"] == CLASSES
    assert meta["sample_rate"] == SR
    assert meta["duration"] == 1.0
    assert meta["activation"] == "sigmoid"
    assert (meta["fmin"], meta["fmax"]) == (20.0, 8000.0)
    assert meta["frame_seconds"] == pytest.approx(model.frame_seconds)
    assert meta["model_config"]["backbone"] == model.config.backbone
    assert meta["frontend_graph"] == "matmul_dft"
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="not an nfaudio ONNX export"):
        read_onnx_metadata(tmp_path / "foreign.onnx")


@pytest.mark.parametrize("kwargs", [
    dict(n_fft=512, hop_length=128),  # hop divides n_fft: frames by reshaping
    dict(n_fft=400, hop_length=160, pad_mode="reflect", power=1.0, normalize="per_clip"),  # frames by gather
    dict(n_fft=256, hop_length=64, top_db=None, center=False, normalize="fixed", mean=-20.0, std=10.0),
])
def test_matmul_frontend_matches_logmel(kwargs: dict) -> None:
    fe = LogMel(sample_rate=SR, n_mels=40, fmax=8000.0, **kwargs)
    wave = torch.randn(3, 9000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        ref, got = fe(wave), fe.with_stft("matmul")(wave)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-3


def test_standard_stft_graph_and_precision_option(ckpt: Path, tmp_path: Path, audio_dir: Path) -> None:
    plain = export_onnx(ckpt, tmp_path / "plain.onnx", fast_frontend=False)  # check=True: parity <= 1e-4
    assert read_onnx_metadata(plain)["frontend_graph"] == "stft"
    with pytest.raises(ValueError, match="needs the openvino backend"):
        Predictor.from_checkpoint(ckpt, precision="bf16")
    with pytest.raises(ValueError, match="needs the openvino backend"):
        Predictor.from_checkpoint(plain, backend="onnxruntime", precision="bf16")
    pytest.importorskip("openvino")
    ref = Predictor.from_checkpoint(ckpt, num_workers=0).predict([audio_dir / "a.wav"])
    fast = Predictor.from_checkpoint(plain, backend="openvino", precision="bf16", num_workers=0, threads=1)
    assert fast.scorer.name == "openvino-bf16"
    np.testing.assert_allclose(fast.predict([audio_dir / "a.wav"]).to_numpy(), ref.to_numpy(), atol=0.05)


def test_activate_matches_torch() -> None:
    logits = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32) * 3
    np.testing.assert_allclose(activate(logits, "sigmoid"), torch.sigmoid(torch.from_numpy(logits)), atol=1e-6)
    np.testing.assert_allclose(activate(logits, "softmax"), torch.softmax(torch.from_numpy(logits), -1), atol=1e-6)


def test_onnxruntime_backend_equals_torch(ckpt: Path, exported: Path, audio_dir: Path, tmp_path: Path) -> None:
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


def test_cli_exports_every_fold_and_the_onnx_ensemble_matches(cv_dir: Path, audio_dir: Path, tmp_path: Path) -> None:
    assert main(["export", str(cv_dir), "--out", str(tmp_path / "onnx")]) == 0
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["fold0.onnx", "fold1.onnx"]
    ref = Predictor.from_checkpoint(cv_dir, num_workers=0).predict([audio_dir / "a.wav"])
    got = Predictor.from_checkpoint(tmp_path / "onnx", backend="onnxruntime", num_workers=0, threads=1)
    np.testing.assert_allclose(got.predict([audio_dir / "a.wav"]).to_numpy(), ref.to_numpy(), atol=1e-5)
    assert main(["export", str(cv_dir / "fold1" / "best.pt"), "--out", str(tmp_path / "one.onnx")]) == 0
    assert read_onnx_metadata(tmp_path / "one.onnx")["classes"] == CLASSES
