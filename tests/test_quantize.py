"""Tests for nfaudio.quantize (int8 through NNCF for the OpenVINO backend): the rank correlation against scipy, the
calibration windows against the audio reader, int8 scores close to fp32 on a tiny model, the accuracy guard
(refuses on a too-tight tolerance, passes on a loose one, warns with ``warn``), the cache (reused, rebuilt for
another calibration set), the CLI's one-line exit 2, a warm int8 run without nncf or torch, and the export's folding of
weight-standardized convolutions."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_loaded_modules, write_tone
from scipy.stats import spearmanr

from nfaudio.quantize import Int8AccuracyError, Int8Options, calibration_windows, rank_correlation

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_rank_correlation_equals_scipy_per_column_and_is_nan_for_a_constant_column() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((40, 3))
    b = a + 0.3 * rng.random((40, 3))
    b[:5, 1] = b[5, 1]  # ties
    a[:, 2] = 0.5  # constant
    got = rank_correlation(a, b)
    for c in range(2):
        assert got[c] == pytest.approx(spearmanr(a[:, c], b[:, c]).statistic, abs=1e-12)
    assert np.isnan(got[2])
    assert rank_correlation(b, b)[:2] == pytest.approx([1.0, 1.0])


def test_calibration_windows_share_the_seconds_between_files(tmp_path: Path) -> None:
    from nfaudio.audio import stream_windows

    a = write_tone(tmp_path / "a.wav", 3.5, seed=0)
    b = write_tone(tmp_path / "b.wav", 1.5, seed=1)
    c = write_tone(tmp_path / "c.wav", 6.0, seed=2)
    got = calibration_windows([a, b, c], 16000, 1.0, seconds=6.0)
    # 6 windows: 2 from a, b's 2 (one padded), then 2 from c
    want = [w for path, n in ((a, 2), (b, 2), (c, 2))
            for _, _, w in list(stream_windows(path, 16000, 1.0, 1.0, last="pad"))[:n]]
    np.testing.assert_array_equal(got, np.stack(want))
    with pytest.raises(ValueError, match="no calibration audio"):
        calibration_windows([tmp_path / "missing.wav"], 16000, 1.0, 5.0)


def test_freezing_weight_standardization_keeps_the_outputs() -> None:
    from nfaudio.export import freeze_weight_standardization
    from nfaudio.models import create_model

    torch.manual_seed(0)
    model = create_model("nfaudio_tiny", 4, head="sed").eval()
    with torch.no_grad():
        for p in model.parameters():  # no zero-initialised gains: every branch counts
            p.add_(0.05 * torch.randn_like(p))
    wave = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        ref = model(wave).clip
        assert freeze_weight_standardization(model) > 0
        assert freeze_weight_standardization(model) == 0  # nothing left to fold
        got = model(wave).clip
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- int8 models (NNCF + OpenVINO)
@pytest.fixture(scope="module")
def int8_run(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    run = tmp_path_factory.mktemp("int8") / "run"
    run.mkdir()
    shutil.copy(ckpt, run / "best.pt")
    return run


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calib")
    for i in range(3):
        write_tone(root / f"c{i}.wav", 4.0, seed=i)
    return root


def _predictor(run: Path, calib: Path, **options):
    from nfaudio.predict import Predictor

    return Predictor.from_checkpoint(run, backend="openvino", precision="int8", num_workers=0, threads=1,
                                     int8=Int8Options((str(calib),), **options))


def test_int8_scores_are_close_to_fp32_and_the_guard_passes_a_loose_tolerance(int8_run: Path, calib: Path,
                                                                              audio_dir: Path) -> None:
    from nfaudio.predict import Predictor

    ref = Predictor.from_checkpoint(int8_run, backend="openvino", num_workers=0, threads=1).predict([audio_dir])
    predictor = _predictor(int8_run, calib, seconds=12.0, tolerance=0.5)
    assert predictor.scorer.name == "openvino-int8"
    assert predictor.scorer.paths[0].endswith("body.xml")
    got = predictor.predict([audio_dir])
    assert got.index.equals(ref.index)
    # int8 kernels differ by CPU (VNNI or not), so the bound is the guard's own figure on like audio (the
    # calibration tones), not a constant measured on one machine; 0.2 caps it for this tiny model everywhere
    guard = json.loads((Path(predictor.scorer.paths[0]).parent / "meta.json").read_text())["max_abs_diff"]
    diff = float(np.abs(got.to_numpy() - ref.to_numpy()).max())
    print(f"int8 vs fp32: max diff {diff:.4f} on the audio, {guard:.4f} on the calibration windows")
    assert 0 < diff <= min(0.2, max(0.05, 1.5 * guard))  # > 0: it is the int8 model that scored


def test_the_guard_refuses_a_too_tight_tolerance_and_warns_with_warn(int8_run: Path, calib: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(Int8AccuracyError, match=r"max \|int8 - fp32\| probability .* exceeds the tolerance 1e-07"):
        _predictor(int8_run, calib, seconds=12.0, tolerance=1e-7)
    with caplog.at_level(logging.WARNING, logger="nfaudio.quantize"):
        predictor = _predictor(int8_run, calib, seconds=12.0, tolerance=1e-7, warn=True)
    assert predictor.scorer.name == "openvino-int8"
    assert "INT8 ACCURACY WARNING" in caplog.text
    assert "Spearman rank correlation per class" in caplog.text


def test_the_int8_model_is_cached_by_checkpoint_and_calibration_set(int8_run: Path, calib: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import nncf

    from nfaudio.export_cache import cached_export
    from nfaudio.quantize import quantized_body

    entry = cached_export(int8_run / "best.pt")
    files = sorted(calib.glob("*.wav"))
    first = quantized_body(entry, files, seconds=12.0, threads=1)
    assert first.folder.parent == entry.folder
    # (an openvino/ folder of compiled blobs may sit beside them, nfaudio.ov_blobs)
    assert sorted(p.name for p in first.folder.iterdir() if p.name != "openvino") == ["body.bin", "body.xml",
                                                                                      "meta.json"]
    meta = json.loads((first.folder / "meta.json").read_text())
    assert meta["calibration"]["windows"] == 12
    assert len(meta["spearman"]) == len(entry.meta["classes"])
    assert 0 < meta["max_abs_diff"] < 0.5

    def no_quantize(*args, **kwargs):
        raise AssertionError("quantized again although the cache holds the model")

    monkeypatch.setattr(nncf, "quantize", no_quantize)
    again = quantized_body(entry, files, seconds=12.0, threads=1)
    assert not again.built
    assert again.folder == first.folder
    assert again.max_abs_diff == first.max_abs_diff
    monkeypatch.undo()
    other = tmp_path / "other.wav"
    shutil.copy(files[0], other)
    rebuilt = quantized_body(entry, [other], seconds=12.0, threads=1)  # another calibration set: another model
    assert rebuilt.built
    assert rebuilt.folder != first.folder
    assert first.folder.is_dir()


def test_cli_int8_errors_are_one_line_exit_2(int8_run: Path, calib: Path, audio_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from nfaudio.cli import main

    base = ["predict", str(int8_run), str(audio_dir), "--out", str(tmp_path / "out"), "--backend", "openvino",
            "--precision", "int8", "--workers", "0", "--threads", "1", "--no-progress"]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "precision int8 needs calibration audio" in err[0]
    assert main([*base, "--calibration", str(calib), "--calibration-seconds", "12", "--int8-tolerance", "1e-7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "exceeds the tolerance 1e-07" in err[0]
    assert main([*base, "--calibration", str(calib), "--calibration-seconds", "12", "--int8-tolerance", "0.5"]) == 0
    assert (tmp_path / "out" / "submission.csv").is_file()


def test_a_warm_int8_prediction_imports_neither_nncf_nor_torch(int8_run: Path, calib: Path, audio_dir: Path,
                                                              tmp_path: Path) -> None:

    import pandas as pd

    from nfaudio.cli import main

    flags = ["--backend", "openvino", "--precision", "int8", "--calibration", str(calib), "--calibration-seconds",
             "12", "--int8-tolerance", "0.5", "--threads", "1", "--workers", "0", "--no-progress"]
    assert main(["-q", "predict", str(int8_run), str(audio_dir), "--out", str(tmp_path / "cold"), *flags]) == 0
    rc, loaded = cli_loaded_modules(["-q", "predict", str(int8_run), str(audio_dir), "--out", str(tmp_path / "warm"),
                                     *flags], ("nncf", "torch", "timm", "onnx", "nfaudio.export"))
    assert rc == 0
    assert loaded == []
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cold" / "submission.csv"),
                                  pd.read_csv(tmp_path / "warm" / "submission.csv"))
