"""``nfaudio pseudo-label`` and ``nfaudio self-train`` (parsers and handlers; :mod:`nfaudio.cli` adds them)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from nfaudio.cli_args import predict_settings

__all__ = ["COMMANDS", "add_parsers"]


def _add_pseudo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--power", type=float, default=1.0, help="sharpen the pseudo-labels: p ** POWER (1: as scored)")
    p.add_argument("--floor", type=float, default=0.0,
                   help="leave out windows whose best probability is below this (0: keep all)")
    p.add_argument("--top-k", type=int, default=None, help="keep each window's K best classes, the rest 0")


def add_parsers(sub: argparse._SubParsersAction, add_recipe_args: Callable, add_scoring_args: Callable) -> None:
    """Add the commands to ``nfaudio``'s subparsers."""
    p = sub.add_parser("pseudo-label", help="score unlabelled recordings with a teacher: a pseudo-label table",
                       description="Write OUT/pseudo_labels.csv (sharpened soft targets per window), pseudo_files.csv "
                                   "(per-file weights) and pseudo_labels.json; re-run to resume. Train on it with the "
                                   "recipe key pseudo.labels.")
    p.add_argument("model", type=Path, help="teacher: checkpoint, run dir or CV dir (fold ensemble)")
    p.add_argument("inputs", nargs="+", type=Path, help="unlabelled audio files, folders or manifests")
    p.add_argument("--out", "-o", type=Path, required=True, help="output directory")
    p.add_argument("--recipe", "-r", type=Path, default=None,
                   help="the student's recipe: its audio.duration is the window (default: the teacher's duration)")
    add_scoring_args(p)
    _add_pseudo_args(p)
    p.add_argument("--overwrite", action="store_true", help="discard earlier scores in --out instead of resuming")

    p = sub.add_parser("self-train", help="noisy-student rounds: teacher -> pseudo-labels -> student, K times",
                       description="Round 0 trains the recipe on its labelled data; each further round pseudo-labels "
                                   "the unlabelled audio with the previous round's model and trains a noisier student "
                                   "on both. Writes OUT/round<k>/, rounds.csv, rounds.json, rounds.png; re-run to "
                                   "resume.")
    add_recipe_args(p)
    p.add_argument("--unlabelled", nargs="+", type=Path, required=True, help="unlabelled audio files or folders")
    p.add_argument("--rounds", type=int, default=3, help="student rounds after the teacher (3)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output directory (re-run to resume)")
    _add_pseudo_args(p)
    p.add_argument("--cv", action="store_true", help="train each round as the recipe's K-fold CV (fold ensembles)")
    p.add_argument("--student-set", dest="student_overrides", action="append", default=None,
                   metavar="SECTION.KEY=VALUE", help="recipe keys of the students (default: drop-path +0.1, "
                                                     "SpecAugment p >= 0.5; repeatable)")
    p.add_argument("--eval-audio", nargs="+", type=Path, default=(), help="labelled evaluation recordings")
    p.add_argument("--eval-labels", type=Path, default=None,
                   help="their per-window labels (row_id = <file stem>_<end second>, one 0/1 column per class)")
    p.add_argument("--workers", type=int, default=None, help="decode processes while scoring (1)")


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    from nfaudio.config import load_config
    from nfaudio.predict import Predictor, predictor_options
    from nfaudio.selftrain import pseudo_label

    settings = predict_settings(args)
    if args.recipe is not None and args.window is None:
        settings = dataclasses.replace(settings, window=load_config(args.recipe).audio.duration)
    try:
        predictor = Predictor.from_checkpoint(args.model, **predictor_options(settings))
        summary = pseudo_label(predictor, args.inputs, args.out, power=args.power, floor=args.floor,
                               top_k=args.top_k, overwrite=args.overwrite)
    except ImportError as err:
        raise ValueError(str(err)) from err
    print(summary)
    print(f"pseudo-labels in {args.out / 'pseudo_labels.csv'}")
    return 1 if summary.n_failed else 0


def _cmd_self_train(args: argparse.Namespace) -> int:
    from nfaudio.config import load_config
    from nfaudio.selftrain.loop import self_train

    if args.recipe is None:
        raise ValueError("self-train needs --recipe RECIPE.yaml")
    cfg = load_config(args.recipe, args.overrides)
    predict_kw = {"num_workers": args.workers} if args.workers is not None else {}
    table = self_train(cfg, args.unlabelled, args.out, args.rounds, power=args.power, floor=args.floor,
                       top_k=args.top_k, cv=args.cv, student_overrides=args.student_overrides,
                       eval_audio=args.eval_audio, eval_labels=args.eval_labels, predict_kw=predict_kw)
    columns = [c for c in ("round", "val_score", "macro_auc", "padded_cmap", "pseudo_kept") if c in table]
    print(table[columns].to_string(index=False))
    print(f"rounds in {args.out / 'rounds.csv'}")
    return 0


COMMANDS = {"pseudo-label": _cmd_pseudo_label, "self-train": _cmd_self_train}
