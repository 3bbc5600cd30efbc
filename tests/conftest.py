"""Shared fixtures and helpers: a tiny synthetic BirdCLEF dataset, a tiny training recipe, small audio and CSV
writers, a hand-made BirdCLEF folder, and two saved models with a folder of recordings to score."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from nfaudio.config import from_dict
from nfaudio.synth import SynthConfig, generate_dataset

TINY_SYNTH = SynthConfig(n_species=3, clips_per_species=4, clip_seconds=(1.0, 2.0), n_soundscapes=1,
                         soundscape_seconds=10.0, sample_rate=16000, seed=5, authors_per_species=2)


@pytest.fixture(scope="session")
def tiny_birdclef(tmp_path_factory):
    """A 3-species, 12-clip BirdCLEF-layout dataset at 16 kHz (generated once per session)."""
    return generate_dataset(tmp_path_factory.mktemp("birdclef"), TINY_SYNTH)


def tiny_recipe(root, **sections):
    """A recipe that trains nfaudio_tiny for a couple of fast epochs on ``root``."""
    values = {
        "data": {"kind": "birdclef", "root": str(root), "num_workers": 0, "validate": False},
        "audio": {"sample_rate": 16000, "duration": 1.0},
        "frontend": {"n_fft": 512, "hop_length": 256, "n_mels": 32, "fmin": 20.0, "fmax": 8000.0},
        "model": {"name": "nfaudio_tiny", "head": "sed"},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "batch_size": 4, "seed": 3, "progress": False},
        "cv": {"n_folds": 3},
    }
    for name, overrides in sections.items():
        values.setdefault(name, {}).update(overrides)
    return from_dict(values)


def recipe_model(num_classes: int, frontend: dict, seed: int = 0, duration: float = 1.0):
    """A model the way users get one: built from a recipe with SpecAugment (always on in training), head dropout
    and drop-path, then trained for one optimizer step. Returned in training mode, as a training loop leaves it."""
    from nfaudio.training import ClipFrameLoss, build_model, build_optimizer

    frontend = dict(frontend)
    sample_rate = frontend.pop("sample_rate")
    cfg = from_dict({
        "audio": {"sample_rate": sample_rate, "duration": duration},
        "frontend": frontend,
        "augment": {"specaug_p": 1.0, "specaug_freq_width": 4, "specaug_time_width": 8},
        "model": {"name": "nfaudio_tiny", "drop_rate": 0.3, "drop_path_rate": 0.2},
        "optim": {"name": "adamw", "lr": 1e-2},
    })
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes)
    optimizer = build_optimizer(model, cfg)
    wave = torch.randn(4, int(round(sample_rate * duration))) * 0.1
    target = (torch.rand(4, num_classes) > 0.5).float()
    out = model(wave)
    ClipFrameLoss()(out.clip, out.frame, target).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for the module: the CPU is shared with decode workers, and results stay reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------- files
def write_audio(path: Path, seconds: float, sr: int = 8000, seed: int = 0) -> np.ndarray:
    """Write noise of ``seconds`` to ``path`` (format from the extension); return the samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    y = (0.1 * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))).astype(np.float32)
    sf.write(str(path), y, sr)
    return y


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def birdclef_2023(tmp_path: Path) -> Path:
    """2023/2025-style: label folders in `filename`, taxonomy.csv fixes a non-sorted class order."""
    root = tmp_path / "bc2023"
    rows = [
        ("abethr1", "['zebra1', 'unknown9']", "abethr1/XC1.ogg", 4.0, "Ann"),
        ("zebra1", "[]", "zebra1/XC2.ogg", 0.0, "Bob"),
        ("1139490", None, "1139490/iNat3.ogg", None, "Cy"),
        ("abethr1", "['abethr1', 'zebra1', 'zebra1']", "abethr1/XC4.ogg", 2.5, "Ann"),
    ]
    for i, (_, _, fname, _, _) in enumerate(rows):
        write_audio(root / "train_audio" / fname, 0.3, seed=i)
    write_csv(root / "train_metadata.csv", [
        {"primary_label": p, "secondary_labels": s, "filename": f, "rating": r, "author": a, "latitude": 1.5 * i}
        for i, (p, s, f, r, a) in enumerate(rows)])
    write_csv(root / "taxonomy.csv", [{"primary_label": c, "common_name": c.upper()}
                                      for c in ("zebra1", "abethr1", "1139490")])
    write_csv(root / "sample_submission.csv", [{"row_id": "s_5", "1139490": 0, "abethr1": 0, "zebra1": 0}])
    return root


# ----------------------------------------------------------------------------------------- models and recordings
SCORE_SR = 16000
CLASSES = ["alpha", "beta", "gamma"]
FRONTEND = dict(sample_rate=SCORE_SR, n_fft=512, hop_length=160, n_mels=32, fmin=20.0, fmax=8000.0)
ALL_FORMATS = ["submission", "table", "detections", "raven", "audacity", "kaleidoscope"]


def save_tiny_model(path: Path, seed: int) -> Path:
    """A recipe-built model (SpecAugment, dropout, drop-path; one step trained) saved to ``path`` for 1 s windows."""
    from nfaudio.models import save_model

    model = recipe_model(len(CLASSES), FRONTEND, seed=seed)
    return save_model(model, path, classes=CLASSES, duration=1.0, activation="sigmoid")


def write_tone(path: Path, seconds: float, sr: int = SCORE_SR, seed: int = 0) -> Path:
    """A tone, on 0.4 s of every second, over a little noise; the tone's pitch follows ``seed``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    y = 0.3 * np.sin(2 * np.pi * (500 + 300 * seed) * t) * (t % 1.0 < 0.4) + 0.05 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y.astype(np.float32), sr)
    return path


@pytest.fixture(scope="session")
def cv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CV run of two folds, ``fold0/best.pt`` and ``fold1/best.pt`` (seeds 0 and 1); never written to, except by
    the export cache (``fold*/.nfaudio-export/``, when a test scores it with onnxruntime or OpenVINO)."""
    root = tmp_path_factory.mktemp("cv")
    save_tiny_model(root / "fold0" / "best.pt", seed=0)
    save_tiny_model(root / "fold1" / "best.pt", seed=1)
    return root


@pytest.fixture(scope="session")
def ckpt(cv_dir: Path) -> Path:
    return cv_dir / "fold0" / "best.pt"


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rec_a.wav (3.5 s), rec_b.flac (2 s), sub/rec_c.ogg (2.6 s at 22.05 kHz, resampled) and a non-audio file."""
    root = tmp_path_factory.mktemp("audio")
    write_tone(root / "rec_a.wav", 3.5, seed=0)
    write_tone(root / "rec_b.flac", 2.0, seed=1)
    write_tone(root / "sub" / "rec_c.ogg", 2.6, sr=22050, seed=2)
    (root / "notes.md").write_text("not audio")
    return root


@pytest.fixture(scope="session")
def exported(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ckpt`` exported to ONNX (skips the tests that use it when onnx is not installed)."""
    pytest.importorskip("onnx")
    from nfaudio.export import export_onnx

    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "model.onnx")


def cli_loaded_modules(args: list[str], heavy: tuple[str, ...]) -> tuple[int, list[str]]:
    """Run ``nfaudio.cli.main(args)`` in a fresh interpreter: its exit status and which of ``heavy`` it imported."""
    import subprocess
    import sys

    code = ("import sys; from nfaudio.cli import main; "
            f"rc = main({args!r}); "
            f"print(f'{{rc}}|' + ','.join(m for m in {heavy!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    rc, _, loaded = out.stdout.strip().splitlines()[-1].partition("|")
    return int(rc), [m for m in loaded.split(",") if m]
