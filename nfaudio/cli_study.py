"""``nfaudio study bn-cost|agc|compare|small-data``: the NFNet paper's claims measured on the recipe's audio
(:mod:`nfaudio.study`).

Parser and handler; :mod:`nfaudio.cli` adds them. Every study writes OUT/results.csv, results.json, PNG plots and
report.md, and resumes per cell when re-run with the same --out.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

__all__ = ["COMMANDS", "add_parsers"]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _strs(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def add_parsers(sub: argparse._SubParsersAction, add_recipe_args: Callable) -> None:
    """Add ``study`` to ``nfaudio``'s subparsers."""
    from nfaudio.study import STUDIES

    p = sub.add_parser("study",
                       help="the NFNet paper's claims on the recipe's audio (bn-cost, agc, compare, small-data)",
                       description="Run a study grid into --out (results.csv/.json, PNG plots, report.md); "
                                   "re-run the same command to resume (finished cells are skipped).")
    p.add_argument("study", choices=sorted(STUDIES),
                   help="bn-cost: what BatchNorm costs; agc: AGC vs batch size; compare: backbones through one "
                        "recipe and one set of folds; small-data: from scratch on a few clips per class")
    add_recipe_args(p)
    p.add_argument("--out", "-o", type=Path, required=True, help="study directory (re-run to resume)")
    p.add_argument("--models", type=_strs, default=None,
                   help="comma-separated models (bn-cost: default smallcnn_bn,smallcnn_nf,resnet26,nf_resnet26, "
                        "'full': all four pairs; compare: default nfaudio_small,nf_resnet26,resnet26, 'full': also "
                        "eca_nfnet_l0,dm_nfnet_f0,efficientnet_b0; small-data: nfaudio_small, 'full' also "
                        "nfaudio_tiny)")
    p.add_argument("--batch-sizes", type=_ints, default=None,
                   help="comma-separated batch sizes (bn-cost 8,16,32; agc 16,64)")
    p.add_argument("--repeats", type=int, default=5, help="bn-cost: timed repeats per case, median (5)")
    p.add_argument("--no-channels-last", action="store_true", help="bn-cost: contiguous layout only")
    p.add_argument("--device", default="cpu", help="bn-cost: cpu or cuda (cuda: torch.cuda.max_memory_allocated)")
    p.add_argument("--clips", type=_floats, default=None, help="agc: AGC thresholds (0.01,0.04,0.16)")
    p.add_argument("--grad-norms", type=_floats, default=None, help="agc: plain clip_grad_norm thresholds (1.0)")
    p.add_argument("--epochs", type=_ints, default=None,
                   help="agc: epochs per cell (2); compare: epochs per fold for every model (default: the "
                        "recipe's); small-data: comma-separated epoch counts, the same for every set size, "
                        "instead of --steps")
    p.add_argument("--steps", type=_ints, default=None,
                   help="small-data: comma-separated budgets in optimizer steps, epochs per set size from them "
                        "(250,1000)")
    p.add_argument("--no-baseline", action="store_true",
                   help="small-data: leave out the classical baseline (log-mel statistics + logistic regression)")
    p.add_argument("--max-steps", type=int, default=10, help="agc: steps per epoch at most (10; 0: all)")
    p.add_argument("--folds", type=_ints, default=None,
                   help="compare: folds to train (default the recipe's cv.folds or all); small-data: held-out "
                        "folds (default the first two)")
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="compare: wall-clock budget of training steps per fold (default 60; with --full or "
                        "--epochs: none)")
    p.add_argument("--sizes", type=_ints, default=None, help="small-data: clips per class (5,10,30)")
    p.add_argument("--lrs", type=_floats, default=None, help="small-data: learning rates (0.003)")
    p.add_argument("--augments", type=_strs, default=None,
                   help="small-data: augmentation levels none,recipe,strong (default none,recipe)")
    p.add_argument("--batch-size", type=int, default=16, help="small-data: training batch size (16)")
    p.add_argument("--full", action="store_true",
                   help="the full-size grid (bn-cost: all pairs, batch 8-64; agc: batch 16-512, thresholds "
                        "0.01-0.16; compare: the GPU-sized models too, the recipe's epochs; small-data: 2 models, "
                        "4 lrs, 4 step budgets, 3 augmentation levels)")


def _cmd_study(args: argparse.Namespace) -> int:
    from nfaudio.config import load_config
    from nfaudio.study import STUDIES

    if args.recipe is None:
        raise ValueError("study needs --recipe RECIPE.yaml")
    cfg = load_config(args.recipe, args.overrides)
    module = importlib.import_module(f"nfaudio.study.{STUDIES[args.study]}")
    if args.study == "bn-cost":
        models = _models(args, module)
        batches = args.batch_sizes or ([8, 16, 32, 64] if args.full else None)
        report = module.run(cfg, args.out, models=models, batch_sizes=batches, repeats=args.repeats,
                            channels_last=(False,) if args.no_channels_last else (False, True), device=args.device)
    elif args.study == "agc":
        batches = args.batch_sizes or (list(module.FULL_BATCHES) if args.full else None)
        clips = args.clips or (list(module.FULL_CLIPS) if args.full else None)
        report = module.run(cfg, args.out, batch_sizes=batches, clips=clips, grad_norms=args.grad_norms,
                            epochs=(args.epochs or [2])[0], max_steps=args.max_steps or None)
    elif args.study == "compare":
        models = _models(args, module)
        if args.epochs and len(args.epochs) > 1:
            raise ValueError("compare takes one --epochs value (the budget of every model)")
        budget = args.budget_seconds
        if budget is None and not args.epochs and not args.full:
            budget = module.DEFAULT_BUDGET_SECONDS  # minutes on a CPU; --full: the recipe's epochs
        report = module.run(cfg, args.out, models=models, folds=args.folds, budget_seconds=budget,
                            epochs=args.epochs[0] if args.epochs else None)
    else:
        report = module.run(cfg, args.out, sizes=args.sizes,
                            models=_models(args, module),
                            lrs=args.lrs or (list(module.FULL_LRS) if args.full else None),
                            epochs=args.epochs,
                            steps=args.steps or (list(module.FULL_STEPS) if args.full and not args.epochs else None),
                            augments=args.augments or (list(module.FULL_AUGMENTS) if args.full else None),
                            folds=args.folds, batch_size=args.batch_size, baseline=not args.no_baseline)
    print(f"report in {report}")
    return 0


def _models(args: argparse.Namespace, module) -> list[str] | None:
    """``--models`` of any study: ``full`` (or ``--full`` without ``--models``) is the study's ``FULL_MODELS``;
    None leaves the study's default."""
    if args.models == ["full"] or (args.full and args.models is None):
        return list(module.FULL_MODELS)
    return args.models


COMMANDS = {"study": _cmd_study}
