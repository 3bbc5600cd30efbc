"""Compiled OpenVINO models kept on disk (nfaudio.ov_blobs): written once, imported next time, rebuilt when bad."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nfaudio.export_cache import cached_export
from nfaudio.fileio import TMP_SUFFIX
from nfaudio.ov_blobs import BLOB_DIR_NAME, blob_path, compile_cached, cpu_signature
from nfaudio.predict import Predictor

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
pytest.importorskip("onnx")
ov = pytest.importorskip("openvino")


class CountingCore:
    """The process's real ``openvino.Core``, counting which of its two loading paths ran."""

    def __init__(self) -> None:
        from nfaudio.backends import openvino_core

        self.core, self.compiled, self.imported = openvino_core(), 0, 0

    def compile_model(self, *args, **kwargs):
        self.compiled += 1
        return self.core.compile_model(*args, **kwargs)

    def import_model(self, *args, **kwargs):
        self.imported += 1
        return self.core.import_model(*args, **kwargs)


@pytest.fixture
def entry(ckpt: Path, tmp_path: Path):
    shutil.copy(ckpt, tmp_path / "best.pt")
    return cached_export(tmp_path / "best.pt")


CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}


def _spec(entry, seed: int = 0) -> np.ndarray:
    from nfaudio.backends import openvino_core

    frontend = openvino_core().compile_model(str(entry.frontend), "CPU", CONFIG)
    wave = np.random.default_rng(seed).standard_normal((2, entry.meta["sample_rate"])).astype(np.float32) * 0.1
    return frontend(wave)[frontend.output("spec")]


def test_the_first_load_writes_a_blob_and_the_second_imports_it_with_equal_outputs(entry) -> None:
    core, spec = CountingCore(), _spec(entry)
    first = compile_cached(core, entry.body, "CPU", CONFIG)
    blob = blob_path(entry.body, "CPU", CONFIG, ov.__version__)
    assert blob.parent == entry.folder / BLOB_DIR_NAME
    assert blob.stat().st_size > 0
    assert (core.compiled, core.imported) == (1, 0)
    second = compile_cached(core, entry.body, "CPU", CONFIG)
    assert (core.compiled, core.imported) == (1, 1)
    np.testing.assert_array_equal(second(spec)[second.output("clip")], first(spec)[first.output("clip")])
    assert not [p for p in blob.parent.iterdir() if p.name.endswith((".tmp", TMP_SUFFIX))]


def test_a_damaged_blob_is_compiled_again_and_replaced(entry, caplog: pytest.LogCaptureFixture) -> None:
    core, spec = CountingCore(), _spec(entry, 1)
    ref = compile_cached(core, entry.body, "CPU", CONFIG)
    blob = blob_path(entry.body, "CPU", CONFIG, ov.__version__)
    good = blob.read_bytes()
    blob.write_bytes(b"not a compiled model")
    with caplog.at_level(logging.WARNING, logger="nfaudio.ov_blobs"):
        again = compile_cached(core, entry.body, "CPU", CONFIG)
    assert "cannot import the compiled model" in caplog.text
    assert str(blob) in caplog.text
    assert (core.compiled, core.imported) == (2, 1)
    assert blob.stat().st_size == len(good)
    np.testing.assert_array_equal(again(spec)[again.output("clip")], ref(spec)[ref.output("clip")])


def test_other_settings_get_another_blob_and_the_old_one_goes(entry) -> None:
    core = CountingCore()
    compile_cached(core, entry.body, "CPU", CONFIG)
    compile_cached(core, entry.frontend, "CPU", CONFIG)
    other = {**CONFIG, "INFERENCE_NUM_THREADS": 2}
    compile_cached(core, entry.body, "CPU", other)
    names = sorted(p.name for p in (entry.folder / BLOB_DIR_NAME).iterdir())
    assert names == sorted([blob_path(entry.body, "CPU", other, ov.__version__).name,
                            blob_path(entry.frontend, "CPU", CONFIG, ov.__version__).name])
    assert blob_path(entry.body, "CPU", other, ov.__version__) != blob_path(entry.body, "CPU", CONFIG, ov.__version__)
    assert cpu_signature()


def test_a_folder_that_cannot_be_made_still_compiles_and_keeps_no_blob(entry, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")  # a blob folder under a regular file cannot be made, even by root
    core, spec = CountingCore(), _spec(entry)
    compiled = compile_cached(core, entry.body, "CPU", CONFIG, folder=tmp_path / "a_file" / "blobs")
    assert compiled(spec)[compiled.output("clip")].shape == (2, len(entry.meta["classes"]))
    assert (core.compiled, core.imported) == (1, 0)


def test_a_warm_openvino_prediction_imports_blobs_and_scores_as_the_cold_one(ckpt: Path, audio_dir: Path,
                                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ckpt, run / "best.pt")
    cold = Predictor.from_checkpoint(run, backend="openvino", num_workers=0, batch_size=4, threads=1).predict(
        [audio_dir])
    entry = cached_export(run / "best.pt")
    blobs = sorted(p.name.split("-")[0] for p in (entry.folder / BLOB_DIR_NAME).glob("*.blob"))
    assert blobs == ["body", "frontend"]
    mtimes = {p: p.stat().st_mtime_ns for p in (entry.folder / BLOB_DIR_NAME).iterdir()}
    warm = Predictor.from_checkpoint(run, backend="openvino", num_workers=0, batch_size=4, threads=1).predict(
        [audio_dir])
    assert {p: p.stat().st_mtime_ns for p in (entry.folder / BLOB_DIR_NAME).iterdir()} == mtimes
    pd.testing.assert_frame_equal(warm, cold)
