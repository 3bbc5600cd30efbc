"""Self-training on real audio, the transductive case: FSDD leave-one-speaker-out (issue 11).

Round 0 is the plain leave-one-speaker-out CV of ``recipes/fsdd.yaml`` (``nfaudio cv``) with
``train.select=last``, so every figure is the last epoch's (no epoch is chosen on the held-out speaker). For
round ``r >= 1`` and each fold ``k``, the previous round's fold-``k`` model pseudo-labels the held-out speaker's
clips (their labels unused), and a student is trained on the five labelled speakers plus those pseudo-labelled
clips (recipe section ``pseudo``, mode ``rows``: extra training rows with the teacher's sharpened, renormalised
softmax as the target) with the noisy-student overrides (more drop-path, SpecAugment on at least half of the
clips); it is then scored on the same held-out speaker's true labels. This is the transductive setting of
test-time self-training: the unlabelled pool is the test set itself.

Writes ``benchmarks/results/selftrain_fsdd.json``: per round and fold the accuracy, the pseudo-labels' accuracy
(against the labels, for analysis only), and the mean over folds.

Usage:
    python benchmarks/selftrain_fsdd.py [--rounds 1] [--power 2] [--floor 0] [--epochs 20]
        [--work /tmp/nfaudio-fsdd-selftrain] [--out benchmarks/results/selftrain_fsdd.json]
Smoke test:
    python benchmarks/selftrain_fsdd.py --epochs 1 --folds 1 --limit 200 --out /tmp/fsdd-st-smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nfaudio.config import apply_overrides, from_dict, load_config
from nfaudio.cv import run_cv
from nfaudio.predict import Predictor
from nfaudio.selftrain.loop import default_student_overrides
from nfaudio.selftrain.pseudo import pseudo_label, read_pseudo_labels

sys.path.insert(0, str(Path(__file__).parent))
from selftrain import write_result  # noqa: E402


def fold_accuracy(run_dir: Path, fold: int) -> float:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return float(metrics["per_fold"][str(fold)][metrics["metric"]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="fsdd")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--power", type=float, default=2.0)
    p.add_argument("--floor", type=float, default=0.0)
    p.add_argument("--weight", type=float, default=1.0, help="pseudo.weight: loss weight of a pseudo row")
    p.add_argument("--folds", default="", help="comma-separated folds (default: all six speakers)")
    p.add_argument("--limit", type=int, default=0, help="smoke test: keep this many manifest rows")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--work", default="/tmp/nfaudio-fsdd-selftrain")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "selftrain_fsdd.json"))
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.recipe)
    root = Path(cfg.data.manifest).parent
    manifest_path = Path(cfg.data.manifest)
    manifest = pd.read_csv(manifest_path)
    if args.limit:
        manifest = manifest.groupby("fold", group_keys=False).sample(n=args.limit // 6, random_state=0)
        manifest_path = work / "metadata.csv"
        manifest.assign(filename=[str(Path(cfg.data.manifest).parent / f) for f in manifest["filename"]]).to_csv(
            manifest_path, index=False)
    overrides = [f"train.epochs={args.epochs}", "train.select=last", "train.progress=false",
                 f"data.manifest={manifest_path}", *args.set]
    cfg = from_dict(apply_overrides(cfg.to_dict(), overrides))
    folds = [int(f) for f in args.folds.split(",")] if args.folds else sorted(manifest["fold"].unique().tolist())

    teacher = run_cv(cfg, work / "round0", folds=folds)
    rows = [{"round": 0, "fold": k, "accuracy": fold_accuracy(work / "round0", k)} for k in folds]
    print(json.dumps(rows), flush=True)
    student_overrides = default_student_overrides(cfg)
    previous = {k: work / "round0" / f"fold{k}" for k in folds}
    for r in range(1, args.rounds + 1):
        current = {}
        for k in folds:
            pool = manifest[manifest["fold"] == k]
            files = [str(root / f) for f in pool["filename"]]  # an absolute name stays as it is
            here = work / f"round{r}" / f"fold{k}"
            predictor = Predictor.from_checkpoint(previous[k], window=cfg.audio.duration, batch_size=128,
                                                   min_duration=0.01)
            pseudo_label(predictor, files, here / "pseudo", power=args.power, floor=args.floor, progress=False)
            labels = read_pseudo_labels(here / "pseudo")
            table = labels.table.reset_index() if "file" not in labels.table.columns else labels.table
            classes = list(labels.classes)
            probs = table[classes].to_numpy()
            by_file = dict(zip((str(Path(f)) for f in files), pool["label"].astype(str)))
            truth = [by_file.get(str(Path(f))) for f in table["file"]]
            pseudo_acc = float(np.mean([classes[i] == t for i, t in zip(probs.argmax(1), truth)]))
            student_cfg = from_dict(apply_overrides(cfg.to_dict(), [*student_overrides, "pseudo.mode=rows",
                                                                      f"pseudo.weight={args.weight}"]))
            student_cfg = dataclasses.replace(student_cfg, pseudo=dataclasses.replace(
                student_cfg.pseudo, labels=[str(here / "pseudo")]))
            run_cv(student_cfg, here / "model", folds=[k])
            current[k] = here / "model" / f"fold{k}"
            rows.append({"round": r, "fold": k, "accuracy": fold_accuracy(here / "model", k),
                         "pseudo_accuracy": pseudo_acc, "pseudo_rows": int(len(table))})
            print(json.dumps(rows[-1]), flush=True)
        previous = current
    summary = []
    for r in range(args.rounds + 1):
        acc = [row["accuracy"] for row in rows if row["round"] == r]
        summary.append({"round": r, "accuracy_mean": statistics.fmean(acc), "accuracy_std": statistics.pstdev(acc),
                        "per_fold": acc})
    for entry in summary:
        entry["gain"] = entry["accuracy_mean"] - summary[0]["accuracy_mean"]
    write_result(args, argv, t0, student_overrides=student_overrides, summary=summary, rows=rows,
                 teacher_metrics=teacher)
    for entry in summary:
        print(entry, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
