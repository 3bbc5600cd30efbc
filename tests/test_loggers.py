"""TensorBoard and Weights & Biases logging of a real (tiny) training run, read back with each tool's own reader:
TensorBoard's EventAccumulator and W&B's transaction-log inspector (``wandb leet inspect --json``) on the offline
run directory. Both must hold exactly what history.csv holds, the resolved config and the curves image."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_recipe

from nfaudio.data import read_birdclef
from nfaudio.rundir import RunDir
from nfaudio.training import fit
from nfaudio.training import loggers as train_loggers

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.integration
COLUMNS = ["train_loss", "val_loss", "val_score", "lr", "clips_per_s"]


def _split(root):
    m = read_birdclef(root)
    idx = np.arange(len(m))
    return m.subset(idx % 3 != 0), m.subset(idx % 3 == 0)


def _cfg(root, epochs=2):
    return tiny_recipe(root, train={"tensorboard": True, "wandb": True, "epochs": epochs})


@pytest.fixture(autouse=True)
def _wandb_env(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline must be the default
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


def _tb(out):
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _wandb_records(out):
    """Every record of every offline W&B run directory under ``out/wandb``, in run-directory order."""
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run directory"
    per_run = []
    for run in runs:
        (log_file,) = run.glob("run-*.wandb")
        text = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(log_file), "--json"],
                              check=True, capture_output=True, text=True, timeout=120).stdout
        per_run.append([json.loads(line) for line in text.splitlines() if line.strip()])
    return runs, per_run


def _history_rows(records):
    return [r["history"]["item"] for r in records if r["type"] == "history"]


def test_tensorboard_and_wandb_hold_history_config_and_curves(tiny_birdclef, tmp_path):
    tr, va = _split(tiny_birdclef.root)
    cfg = _cfg(tiny_birdclef.root)
    out = tmp_path / "run"
    fit(cfg, tr, va, out)
    hist = pd.read_csv(out / RunDir.HISTORY)
    assert hist["epoch"].tolist() == [1, 2]

    acc = _tb(out)
    for col in COLUMNS:
        events = acc.Scalars(col)
        assert [e.step for e in events] == [1, 2], col
        np.testing.assert_allclose([e.value for e in events], hist[col], rtol=1e-6, err_msg=col)
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load(text.strip("`").removeprefix("yaml\n")) == cfg.to_dict()
    (image,) = acc.Images("curves")
    assert image.step == 2
    assert image.encoded_image_string.startswith(b"\x89PNG")
    assert image.width > 100
    assert image.height > 100

    runs, per_run = _wandb_records(out)
    assert len(runs) == 1
    records = per_run[0]
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["telemetry"]["feature"]["offline"] is True
    config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}
    assert config == cfg.to_dict()
    rows = _history_rows(records)
    assert [r["_step"] for r in rows] == [1, 2]
    for row, (_, want) in zip(rows, hist.iterrows()):
        assert row["epoch"] == want["epoch"]
        np.testing.assert_allclose([row[c] for c in COLUMNS], want[COLUMNS].to_numpy(dtype=float), rtol=1e-12)
    assert rows[-1]["curves._type"] == "image-file"
    assert (runs[0] / "files" / rows[-1]["curves.path"]).is_file()


def test_resumed_run_continues_the_same_runs_without_duplicate_steps(tiny_birdclef, tmp_path, monkeypatch):
    tr, va = _split(tiny_birdclef.root)
    cfg = _cfg(tiny_birdclef.root, epochs=3)
    out = tmp_path / "run"
    real_save = RunDir.save_state
    calls = {"n": 0}

    def crash_before_epoch_2s_checkpoint(self, state):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2 is logged everywhere, but its checkpoint is never written
            raise KeyboardInterrupt
        real_save(self, state)

    monkeypatch.setattr(RunDir, "save_state", crash_before_epoch_2s_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tr, va, out)
    monkeypatch.setattr(RunDir, "save_state", real_save)
    assert pd.read_csv(out / RunDir.HISTORY)["epoch"].tolist() == [1, 2]
    fit(cfg, tr, va, out, resume=True)  # redoes epoch 2 from epoch 1's checkpoint

    hist = pd.read_csv(out / RunDir.HISTORY)
    assert hist["epoch"].tolist() == [1, 2, 3]
    acc = _tb(out)
    for col in COLUMNS:
        events = acc.Scalars(col)
        assert [e.step for e in events] == [1, 2, 3], col
        np.testing.assert_allclose([e.value for e in events], hist[col], rtol=1e-6, err_msg=col)
    assert len(acc.Tensors("config/text_summary")) == 1

    runs, per_run = _wandb_records(out)
    assert len(runs) == 2  # the first attempt and the resumed one, one W&B run id
    ids = {r["run"]["run_id"] for records in per_run for r in records if r["type"] == "run"}
    assert len(ids) == 1
    assert (out / "wandb" / train_loggers.WANDB_ID_FILE).read_text().split()[0] in ids
    steps = [row["_step"] for records in per_run for row in _history_rows(records) if "epoch" in row]
    assert steps == [1, 2, 3]
    logged = {int(row["epoch"]): row for records in per_run for row in _history_rows(records) if "epoch" in row}
    for _, want in hist.iterrows():  # a resumed run redoes epoch 2 exactly, so W&B's epoch 2 is history.csv's
        got = logged[int(want["epoch"])]
        np.testing.assert_allclose([got[c] for c in COLUMNS if c != "clips_per_s"],
                                   want[[c for c in COLUMNS if c != "clips_per_s"]].to_numpy(dtype=float),
                                   rtol=1e-9)
