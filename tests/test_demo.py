import json

import pandas as pd
import pytest

from nfaudio.cli import main


@pytest.mark.integration
def test_demo_fast_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "demo CV fold 0" in printed
    assert "pooled OOF" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["macro_auc"] <= 1.0
    assert 0.0 <= summary["padded_cmap"] <= 1.0
    assert summary["seconds"] > 0
    assert set(summary["cv"]["per_fold"]) == {"0", "1"}
    # every 5-second soundscape window of the ground truth is scored, keyed <stem>_<end second>
    truth = pd.read_csv(out / "data" / "test_soundscapes_labels.csv")
    submission = pd.read_csv(out / "predict" / "submission.csv")
    assert sorted(submission["row_id"]) == sorted(truth["row_id"])
    assert list(submission.columns) == list(truth.columns)
    assert summary["n_windows"] == len(truth)
    assert (out / "predict" / "raven_selections.txt").is_file()
    assert (out / "cv" / "metrics.json").is_file()
    assert (out / "cv" / "oof.csv").is_file()
    # the demo's models are trained with SpecAugment: every fold exports and passes the onnxruntime parity check
    assert main(["--quiet", "export", str(out / "cv"), "--out", str(tmp_path / "onnx")]) == 0
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["fold0.onnx", "fold1.onnx"]
