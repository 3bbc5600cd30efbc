"""Distil a fold ensemble into one model: score and prediction speed (issue 11).

On the synthetic world of ``benchmarks/selftrain.py`` (focal training clips, labelled target-domain
soundscapes for evaluation): the teacher is a ``--teacher-folds``-fold CV of the demo recipe (``nfaudio_small`` +
attention SED head, AGC), used as the fold ensemble. Each student model (``--students``, e.g. the same
``nfaudio_small`` and the 14k-parameter ``nfaudio_tiny``) is trained twice with the same recipe, seed and
train/validation split: on the labels only, and distilled from the ensemble (recipe section ``distill``: the
teacher scores every augmented batch online, ``loss = (1 - alpha) hard + alpha T^2 soft``). Every run uses
``train.select=last`` (no epoch is picked on a validation score). All models are scored on the evaluation
soundscapes (macro ROC-AUC, padded cmAP), and the prediction speed of the ensemble and of each student is
measured side by side in one process (``Predictor.predict`` over the evaluation soundscapes, torch backend,
interleaved repeats, median).

Writes ``benchmarks/results/distill.json``.

Usage:
    python benchmarks/distill.py [--seed 0] [--epochs 30] [--teacher-folds 2] [--students nfaudio_small,nfaudio_tiny]
        [--alpha 0.7] [--temperature 2] [--repeats 3]
Smoke test:
    python benchmarks/distill.py --epochs 1 --clips-per-species 4 --n-eval 2 --students nfaudio_tiny --val-folds 2 \\
        --repeats 1 --out /tmp/distill-smoke.json --work /tmp/distill-smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from nfaudio.audio.io import info as audio_info
from nfaudio.config import apply_overrides, from_dict
from nfaudio.cv import run_cv
from nfaudio.demo import demo_config
from nfaudio.inputs import list_audio
from nfaudio.metrics import score_submission
from nfaudio.models import load_checkpoint
from nfaudio.predict import Predictor
from nfaudio.predict_run import run_prediction
from nfaudio.synth import SynthConfig, generate_dataset
from nfaudio.synth.domain import TargetDomain
from nfaudio.training import train_from_config

sys.path.insert(0, str(Path(__file__).parent))
from selftrain import write_result  # noqa: E402


def evaluate(model: Path, audio: Path, labels: Path, out: Path) -> dict:
    predictor = Predictor.from_checkpoint(model, batch_size=32)
    run_prediction(predictor, [audio], out, formats=("submission",), progress=False)
    submission = pd.read_csv(out / "submission.csv")
    truth = pd.read_csv(labels)
    return {"macro_auc": score_submission(truth, submission, "macro_auc"),
            "padded_cmap": score_submission(truth, submission, "padded_cmap")}


def n_params(model: Path) -> int:
    ckpt = model / "best.pt" if (model / "best.pt").is_file() else next(iter(sorted(model.glob("fold*/best.pt"))))
    net, _ = load_checkpoint(ckpt)
    return sum(p.numel() for p in net.parameters())


def speed(models: dict[str, Path], audio: Path, repeats: int) -> dict[str, dict]:
    files = list_audio([audio])
    seconds = sum(audio_info(f).duration for f in files)
    predictors = {name: Predictor.from_checkpoint(path, batch_size=32) for name, path in models.items()}
    for predictor in predictors.values():  # warm-up
        predictor.predict(files[:1])
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(repeats):
        order = list(predictors) if r % 2 == 0 else list(reversed(predictors))
        for name in order:
            t0 = time.perf_counter()
            predictors[name].predict(files)
            times[name].append(time.perf_counter() - t0)
    return {name: {"seconds_median": statistics.median(t), "seconds": t, "audio_seconds": seconds,
                   "x_realtime": seconds / statistics.median(t)} for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--clips-per-species", type=int, default=30)
    p.add_argument("--n-eval", type=int, default=10)
    p.add_argument("--teacher-folds", type=int, default=2)
    p.add_argument("--students", default="nfaudio_small,nfaudio_tiny")
    p.add_argument("--val-folds", type=int, default=5, help="students: 1/k of the clips validate")
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", default="/tmp/nfaudio-distill")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill.json"))
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    work = Path(args.work)
    synth = SynthConfig(seed=args.seed, clips_per_species=args.clips_per_species, clip_seconds=(2.0, 6.0),
                        n_soundscapes=args.n_eval, target_domain=TargetDomain())
    data = generate_dataset(work / "data", synth)
    base = demo_config(data.root, seed=args.seed)
    common = [f"train.epochs={args.epochs}", "train.select=last"]
    teacher_cfg = from_dict(apply_overrides(base.to_dict(), [*common, f"cv.n_folds={args.teacher_folds}"]))
    run_cv(teacher_cfg, work / "teacher")
    audio, labels = data.root / "test_soundscapes", data.soundscape_labels
    results = {"teacher": {"model": base.model.name, "folds": args.teacher_folds,
                           "params_per_member": n_params(work / "teacher"),
                           **evaluate(work / "teacher", audio, labels, work / "eval" / "teacher")}}
    print(json.dumps(results), flush=True)
    models = {"teacher": work / "teacher"}
    for student in args.students.split(","):
        for kind in ("labels", "distilled"):
            extra = [f"model.name={student}", f"cv.n_folds={args.val_folds}"]
            if kind == "distilled":
                extra += [f"distill.teacher={work / 'teacher'}", f"distill.alpha={args.alpha}",
                          f"distill.temperature={args.temperature}"]
            cfg = from_dict(apply_overrides(base.to_dict(), [*common, *extra]))
            name = f"{student}_{kind}"
            out = work / name
            result = train_from_config(cfg, out, resume=(out / "last.pt").is_file())
            results[name] = {"model": student, "kind": kind, "params": n_params(out),
                             "val_score_last": result.best_score,
                             **evaluate(out, audio, labels, work / "eval" / name)}
            models[name] = out
            print(json.dumps({name: results[name]}), flush=True)
    timing = speed(models, audio, args.repeats)
    for name, entry in timing.items():
        results[name]["predict"] = entry
        results[name]["speed_vs_teacher"] = timing["teacher"]["seconds_median"] / entry["seconds_median"]
    write_result(args, argv, t0, results=results)
    for name, entry in results.items():
        print(name, {k: v for k, v in entry.items() if k != "predict"}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
