import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_recipe

from nfaudio import __version__
from nfaudio.cli import main
from nfaudio.metrics import macro_roc_auc


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"nfaudio {__version__}"
    assert main([]) == 0
    assert "list-models" in capsys.readouterr().out


def test_python_dash_m_runs():
    out = subprocess.run([sys.executable, "-m", "nfaudio", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"nfaudio {__version__}"


def test_list_models_filters(capsys):
    assert main(["list-models", "eca_nfnet_l*"]) == 0
    names = capsys.readouterr().out.split()
    assert "eca_nfnet_l0" in names
    assert all(n.startswith("eca_nfnet_l") for n in names)


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--recipe", "missing.yaml", "--out", "x"], "recipe not found: missing.yaml"),
    (["train", "--out", "x"], "train needs --recipe"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_bad_key_and_missing_data_are_one_line_errors(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lrr: 0.1\n")
    assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "unknown key 'optim.lrr'; did you mean 'lr'?" in capsys.readouterr().err
    recipe.write_text(f"data:\n  kind: birdclef\n  root: {tmp_path / 'nowhere'}\n")
    assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "nowhere" in err[0]
    recipe.write_text("model:\n  name: eca_nfnet_l0\n")
    assert main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "no data: set data.root" in capsys.readouterr().err


def test_evaluate_scores_a_submission_by_row_id(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = [f"soundscape_1_{5 * (i + 1)}" for i in range(20)]
    truth = pd.DataFrame(rng.integers(0, 2, (20, 3)), columns=["a", "b", "c"])
    truth.insert(0, "row_id", ids)
    scores = pd.DataFrame(rng.random((20, 3)), columns=["a", "b", "c"])
    scores.insert(0, "row_id", ids)
    truth.to_csv(tmp_path / "solution.csv", index=False)
    scores.sample(frac=1, random_state=1).to_csv(tmp_path / "submission.csv", index=False)
    assert main(["evaluate", "--metric", "macro_auc", str(tmp_path / "solution.csv"),
                 str(tmp_path / "submission.csv")]) == 0
    expected = macro_roc_auc(truth[["a", "b", "c"]].to_numpy(), scores[["a", "b", "c"]].to_numpy())
    assert capsys.readouterr().out.strip() == f"macro_auc {expected:.6f}"

    scores.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    assert main(["evaluate", "--metric", "macro_auc", str(tmp_path / "solution.csv"), str(tmp_path / "short.csv")]) == 2
    assert "row" in capsys.readouterr().err


def test_demo_into_a_folder_of_other_files_is_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "demo" / "data"
    data.mkdir(parents=True)
    (data / "precious.txt").write_text("not a synthetic dataset")
    assert main(["demo", "--fast", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "nfaudio demo: error:" in err[0]
    assert (data / "precious.txt").read_text() == "not a synthetic dataset"


def test_a_typo_in_a_choice_fails_before_any_data_is_read(tmp_path, capsys):
    # the data root does not exist: an error about the choice proves the config was checked before the data
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  kind: birdclef\n  root: {tmp_path / 'nowhere'}\n")
    for command in ("train", "cv"):
        argv = [command, "--recipe", str(recipe), "--set", "train.select=bset", "--out", str(tmp_path / "run")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"nfaudio {command}: error: 'train.select' cannot be 'bset'; did you mean 'best'? "
                       f"valid values: best, last in {recipe}"]
    assert not (tmp_path / "run").exists()


def _dests(command: str) -> set[str]:
    from nfaudio.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest for a in sub._actions if a.dest != "help"}


def test_predict_flags_recipe_keys_and_python_api_do_not_drift():
    import dataclasses
    import inspect

    from nfaudio.cli import PREDICT_RUN_FLAGS
    from nfaudio.config import PredictConfig
    from nfaudio.predict import Predictor, output_options, predictor_options
    from nfaudio.predict_run import run_prediction

    keys = {f.name for f in dataclasses.fields(PredictConfig)}
    assert _dests("predict") - set(PREDICT_RUN_FLAGS) == keys  # every flag is a recipe key and back
    # every key reaches the Python API: changing any one key changes the keyword arguments it maps to
    base = {**predictor_options(PredictConfig(window=5.0)), **output_options(PredictConfig(window=5.0))}
    changed = {"window": 4.0, "hop": 2.0, "overlap": 1.0, "batch_size": 7, "last": "drop", "tta_shift": 1.0,
               "smoothing": 0.2, "backend": "onnxruntime", "precision": "bf16", "calibration": ["calib"],
               "calibration_seconds": 60.0, "int8_tolerance": 0.5, "int8_warn": True, "device": "cpu", "threads": 3,
               "workers": 3, "decode_timeout": 5.0, "decode_timeout_factor": 0.5, "min_duration": 1.0,
               "formats": ["raven"], "table_format": "parquet",
               "threshold": 0.1, "top_k": 2, "cluster": "local:2"}
    assert set(changed) == keys
    for key, value in changed.items():
        other = PredictConfig(**{"window": 5.0, key: value})
        assert {**predictor_options(other), **output_options(other)} != base, key
    accepted = (set(inspect.signature(Predictor.from_checkpoint).parameters)
                | set(inspect.signature(Predictor.__init__).parameters)
                | set(inspect.signature(run_prediction).parameters))
    assert set(base) <= accepted


def test_train_and_cv_flags_match_the_python_api():
    import inspect

    from nfaudio.cv import run_cv
    from nfaudio.training import train_from_config

    common = {"recipe", "overrides", "out"}  # -> load_config(recipe, overrides) and out_dir
    assert _dests("train") - common == {"resume"} <= set(inspect.signature(train_from_config).parameters)
    assert _dests("cv") - common == {"folds", "full", "merge"}  # --merge is nfaudio.cv.merge_cv
    assert {"folds", "full"} <= set(inspect.signature(run_cv).parameters)


@pytest.mark.parametrize("command", ["train", "cv"])
def test_every_manifest_problem_is_one_line_and_nothing_is_trained(command, tmp_path, capsys):
    from conftest import tiny_recipe, write_audio, write_csv

    from nfaudio.config import dump_config

    write_audio(tmp_path / "a.wav", 1.0)
    write_audio(tmp_path / "b.wav", 1.0)
    csv = write_csv(tmp_path / "m.csv", [{"path": "a.wav", "label": "dog"},
                                         {"path": "gone.wav", "label": "cat"},       # missing file
                                         {"path": "a.wav", "label": "dog"},          # duplicate row
                                         {"path": "b.wav", "label": "cat;zebra"},    # zebra: a class, no problem
                                         {"path": "b.wav", "label": " "}])           # empty label
    recipe = tmp_path / "r.yaml"
    dump_config(tiny_recipe(None, data={"kind": "csv", "root": None, "manifest": str(csv)}), recipe)
    out = tmp_path / "run"
    assert main([command, "--recipe", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nfaudio {command}: error: {csv}: row 4 (line 6): empty path or label",
                   f"nfaudio {command}: error: {csv}: row 2 (line 4): duplicate row id 'a' (first at row 0 (line 2))",
                   f"nfaudio {command}: error: {csv}: row 1 (line 3): audio file not found: {tmp_path / 'gone.wav'}"]
    assert not out.exists()  # nothing trained, nothing written


# ------------------------------------------------------------------------- OS-level errors on the user's paths
@pytest.fixture
def regular_file(tmp_path: Path) -> Path:
    """A regular file: a path under it cannot be created, even by root (NotADirectoryError)."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def _one_line(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"nfaudio {command}: error: ")
    return err[0]


@pytest.mark.parametrize("command", ["train", "cv"])
def test_train_and_cv_out_under_a_regular_file_is_a_one_line_error(command, tiny_birdclef, regular_file, tmp_path,
                                                                  capsys):
    from nfaudio.config import dump_config

    recipe = tmp_path / "r.yaml"
    dump_config(tiny_recipe(tiny_birdclef.root), recipe)
    out = regular_file / "run"
    assert main([command, "--recipe", str(recipe), "--out", str(out)]) == 2
    line = _one_line(capsys, command)
    assert f"--out {out}: Not a directory" in line


def test_predict_out_under_a_regular_file_is_a_one_line_error(ckpt, audio_dir, regular_file, capsys):
    out = regular_file / "predictions"
    assert main(["predict", str(ckpt), str(audio_dir), "--out", str(out), "--no-progress"]) == 2
    assert f"--out {out}: Not a directory" in _one_line(capsys, "predict")


def test_export_out_under_a_regular_file_is_a_one_line_error(ckpt, regular_file, capsys):
    pytest.importorskip("onnx")
    out = regular_file / "model.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--no-check"]) == 2
    assert f"--out {out}: {regular_file} is not a directory" in _one_line(capsys, "export")


def test_demo_out_under_a_regular_file_is_a_one_line_error(regular_file, capsys):
    out = regular_file / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 2
    assert f"--out {out}: Not a directory" in _one_line(capsys, "demo")


def test_evaluate_inputs_that_are_not_files_are_one_line_errors(regular_file, tmp_path, capsys):
    bad = regular_file / "solution.csv"
    assert main(["evaluate", "--metric", "macro_auc", str(bad), str(tmp_path / "s.csv")]) == 2
    assert f"solution {bad}: Not a directory" in _one_line(capsys, "evaluate")
    (tmp_path / "solution.csv").write_text("row_id,a\nx_5,1\n")
    assert main(["evaluate", "--metric", "macro_auc", str(tmp_path / "solution.csv"), str(tmp_path)]) == 2
    assert f"submission {tmp_path}: Is a directory" in _one_line(capsys, "evaluate")


def test_only_os_errors_on_the_users_paths_are_user_errors(monkeypatch, tmp_path, capsys):
    import nfaudio.demo

    def raising(exc: BaseException):
        def run_demo(*args, **kwargs):
            raise exc
        return run_demo

    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--out", "demo"]  # relative: matched against the absolute file names of the errors
    # the user's: a file under --out, a full disk while writing (no file name)
    inside = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "demo" / "cv" / "folds.csv"))
    monkeypatch.setattr(nfaudio.demo, "run_demo", raising(inside))
    assert main(argv) == 2
    assert _one_line(capsys, "demo") == (f"nfaudio demo: error: --out demo: Permission denied "
                                         f"({tmp_path / 'demo' / 'cv' / 'folds.csv'})")
    monkeypatch.setattr(nfaudio.demo, "run_demo", raising(OSError(errno.ENOSPC, "No space left on device")))
    assert main(argv) == 2
    assert _one_line(capsys, "demo") == "nfaudio demo: error: --out demo: No space left on device"
    with pytest.raises(OSError, match="No space left"):  # --debug: the traceback
        main(["--debug", *argv])
    # bugs: an OS error on a path the user did not give, one without a file name, any other exception
    for exc in (PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "elsewhere" / "x")),
                NotADirectoryError(errno.ENOTDIR, "Not a directory", str(tmp_path / "demo-other")),
                OSError(errno.EIO, "Input/output error"), RuntimeError("a bug")):
        monkeypatch.setattr(nfaudio.demo, "run_demo", raising(exc))
        with pytest.raises(type(exc)):
            main(argv)
        assert capsys.readouterr().err == ""


def test_every_command_and_subcommand_is_in_the_readme():
    """README's command lines cover the parser: each ``nfaudio COMMAND`` (and ``nfaudio probe SUBCOMMAND``)."""
    from nfaudio.cli import build_parser

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [c for c in commands if f"nfaudio {c}" not in readme]
    probe = next(a for a in commands["probe"]._actions if a.dest == "probe_command").choices
    missing += [f"probe {c}" for c in probe if f"nfaudio probe {c}" not in readme]
    assert not missing, f"README.md shows no `nfaudio ...` line for {missing}"
