"""The ``nfaudio`` command line: parse, build the config, call the library.

Errors a user can cause (missing recipe, bad key, missing data, empty class list, unknown model) exit
with status 2 and one clear line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nfaudio import __version__

log = logging.getLogger("nfaudio")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", "-r", type=Path, help="YAML recipe (see recipes/README.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe key, e.g. --set optim.lr=0.01 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfaudio",
        description="Normalizer-free ResNets (NFNets) with Adaptive Gradient Clipping for audio "
                    "classification and sound event detection.")
    parser.add_argument("--version", action="version", version=f"nfaudio {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", "-q", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train one train/validation split from a recipe")
    _add_recipe_args(p)
    p.add_argument("--out", "-o", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")

    p = sub.add_parser("cv", help="K-fold cross-validation: folds.csv, fold{k}/, oof.csv, metrics.json")
    _add_recipe_args(p)
    p.add_argument("--out", "-o", type=Path, required=True, help="CV run directory (re-run to resume)")
    p.add_argument("--folds", type=_int_list, default=None, help="comma-separated folds to train, e.g. 0,2")
    p.add_argument("--full", action="store_true", help="also train a final model on all rows")

    p = sub.add_parser("evaluate", help="score a competition-format submission CSV against a solution CSV")
    p.add_argument("--metric", "-m", required=True, help="padded_cmap, macro_auc, map, accuracy")
    p.add_argument("solution", type=Path)
    p.add_argument("submission", type=Path)
    p.add_argument("--id-column", default="row_id")

    p = sub.add_parser("demo", help="generate synthetic BirdCLEF-style data, train, score soundscapes")
    p.add_argument("--out", "-o", type=Path, default=Path("runs/demo"), help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="a much smaller run (smoke test, not the target)")

    p = sub.add_parser("list-models", help="list the model names create_model accepts")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'eca_*'")
    return parser


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _cmd_train(args: argparse.Namespace) -> int:
    from nfaudio.config import load_config
    from nfaudio.train import train_from_config

    if args.recipe is None:
        raise _UsageError("train needs --recipe RECIPE.yaml")
    cfg = load_config(args.recipe, args.overrides)
    result = train_from_config(cfg, args.out, resume=args.resume)
    print(f"best {cfg.train.metric} {result.best_score:.4f} at epoch {result.best_epoch}; run in {args.out}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_cv(args: argparse.Namespace) -> int:
    from nfaudio.config import load_config
    from nfaudio.cv import run_cv

    if args.recipe is None:
        raise _UsageError("cv needs --recipe RECIPE.yaml")
    cfg = load_config(args.recipe, args.overrides)
    m = run_cv(cfg, args.out, folds=args.folds, full=args.full)
    name = m["metric"]
    for k, scores in m["per_fold"].items():
        print(f"fold {k}: " + ", ".join(f"{n} {v:.4f}" for n, v in scores.items()))
    print(f"mean {name} {m['mean'][name]:.4f} +- {m['std'][name]:.4f}; pooled OOF {m['pooled_oof'][name]:.4f}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from nfaudio.metrics import score_submission

    for path in (args.solution, args.submission):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
    solution = pd.read_csv(args.solution, dtype={args.id_column: str})
    submission = pd.read_csv(args.submission, dtype={args.id_column: str})
    score = score_submission(solution, submission, args.metric, id_col=args.id_column)
    print(f"{args.metric} {score:.6f}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nfaudio.demo import run_demo

    summary = run_demo(args.out, seed=args.seed, fast=args.fast)
    print(f"demo: macro ROC-AUC {summary['macro_auc']:.4f}, padded cmAP {summary['padded_cmap']:.4f} "
          f"on {summary['n_windows']} soundscape windows in {summary['seconds']:.0f} s; outputs in {args.out}")
    return 0


def _cmd_list_models(args: argparse.Namespace) -> int:
    from nfaudio.models import list_models

    for name in list_models(args.pattern):
        print(name)
    return 0


class _UsageError(Exception):
    pass


COMMANDS = {"train": _cmd_train, "cv": _cmd_cv, "evaluate": _cmd_evaluate, "demo": _cmd_demo,
            "list-models": _cmd_list_models}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input rather than a bug (imported lazily: nothing at import time)."""
    from nfaudio.audio import AudioError
    from nfaudio.config import ConfigError
    from nfaudio.data import ManifestError
    from nfaudio.models import PretrainedWeightsError

    return (_UsageError, ConfigError, ManifestError, AudioError, PretrainedWeightsError, FileNotFoundError,
            ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _setup_logging(args.debug, args.quiet)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug or not isinstance(exc, _user_errors()):
            raise
        print(f"nfaudio {args.command}: error: {exc}", file=sys.stderr)
        return 2
