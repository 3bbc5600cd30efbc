"""Tests for nfaudio.export: ONNX export (parity with torch, dynamic batch, self-describing metadata, the
caller's model left as it was, the standard-STFT graph) and ``nfaudio export`` of every fold of a CV run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, FRONTEND, SCORE_SR, recipe_model

from nfaudio.cli import main
from nfaudio.export import export_onnx, read_onnx_metadata
from nfaudio.models import load_checkpoint
from nfaudio.predict import Predictor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SR = SCORE_SR

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_standard_stft_graph_and_precision_option(ckpt: Path, tmp_path: Path, audio_dir: Path) -> None:
    plain = export_onnx(ckpt, tmp_path / "plain.onnx", fast_frontend=False)  # check=True: parity <= 1e-4
    assert read_onnx_metadata(plain)["frontend_graph"] == "stft"
    with pytest.raises(ValueError, match="needs the openvino backend"):
        Predictor.from_checkpoint(ckpt, precision="bf16")
    with pytest.raises(ValueError, match="needs the openvino backend"):
        Predictor.from_checkpoint(plain, backend="onnxruntime", precision="bf16")
    pytest.importorskip("openvino")
    ref = Predictor.from_checkpoint(ckpt, num_workers=0).predict([audio_dir / "rec_a.wav"])
    fast = Predictor.from_checkpoint(plain, backend="openvino", precision="bf16", num_workers=0, threads=1)
    assert fast.scorer.name == "openvino-bf16"
    np.testing.assert_allclose(fast.predict([audio_dir / "rec_a.wav"]).to_numpy(), ref.to_numpy(), atol=0.05)


def test_cli_exports_every_fold_and_the_onnx_ensemble_matches(cv_dir: Path, audio_dir: Path, tmp_path: Path) -> None:
    assert main(["export", str(cv_dir), "--out", str(tmp_path / "onnx")]) == 0
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["fold0.onnx", "fold1.onnx"]
    ref = Predictor.from_checkpoint(cv_dir, num_workers=0).predict([audio_dir / "rec_a.wav"])
    got = Predictor.from_checkpoint(tmp_path / "onnx", backend="onnxruntime", num_workers=0, threads=1)
    np.testing.assert_allclose(got.predict([audio_dir / "rec_a.wav"]).to_numpy(), ref.to_numpy(), atol=1e-5)
    assert main(["export", str(cv_dir / "fold1" / "best.pt"), "--out", str(tmp_path / "one.onnx")]) == 0
    assert read_onnx_metadata(tmp_path / "one.onnx")["classes"] == CLASSES
