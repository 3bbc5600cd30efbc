"""The ``nfaudio`` command line: parse, build the config, call the library.

Errors a user can cause (missing recipe, bad key, missing data, empty class list, unknown model, an output
path under a regular file, a full disk) exit with status 2 and one clear line on stderr (a manifest: one line
per problem); ``--debug`` shows the traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path

from nfaudio import __version__, cli_embed, cli_probe, cli_search, cli_selftrain, cli_study
from nfaudio.choices import BACKENDS, FORMATS, LAST_POLICIES, METRIC_NAMES, PRECISIONS, TABLE_FORMATS
from nfaudio.cli_args import predict_settings

__all__ = ["PREDICT_RUN_FLAGS", "build_parser", "main", "predict_settings"]

log = logging.getLogger("nfaudio")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", "-r", type=Path,
                   help="YAML recipe file, or a shipped recipe's name (`nfaudio recipes` lists them)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe key, e.g. --set optim.lr=0.01 (repeatable)")


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    """How a model scores windows (keys of the recipe's predict section): backend, windows, workers, threads."""
    p.add_argument("--backend", choices=BACKENDS, default=None, help="torch (default), onnxruntime, openvino")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, ...")
    p.add_argument("--window", type=float, default=None, help="window seconds (default: the training duration)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (32)")
    hop = p.add_mutually_exclusive_group()
    hop.add_argument("--hop", type=float, default=None, help="seconds between window starts (default: window)")
    hop.add_argument("--overlap", type=float, default=None, help="seconds shared by consecutive windows")
    p.add_argument("--last", choices=LAST_POLICIES, default=None,
                   help="last window: zero-pad a partial one (pad), drop it, or shift it back to end at the file end")
    p.add_argument("--workers", type=int, default=None, help="decode processes (1; 0: decode in the main process)")
    p.add_argument("--threads", type=int, default=None,
                   help="inference threads (default: every usable core; decode workers run beside them)")


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
    p.add_argument("--merge", action="store_true",
                   help="train nothing: assemble oof.csv and metrics.json from the finished folds (after parallel "
                        "`cv --folds k` processes; the recipe defaults to the run's config.yaml)")

    p = sub.add_parser("evaluate", help="score a competition-format submission CSV against a solution CSV")
    p.add_argument("--metric", "-m", required=True, choices=METRIC_NAMES)
    p.add_argument("solution", type=Path)
    p.add_argument("submission", type=Path)
    p.add_argument("--id-column", default="row_id")

    p = sub.add_parser("demo", help="generate synthetic BirdCLEF-style data, train, score soundscapes")
    p.add_argument("--out", "-o", type=Path, default=Path("runs/demo"), help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="a much smaller run (smoke test, not the target)")

    p = sub.add_parser("predict", help="score recordings with a checkpoint, a run or a CV run (fold ensemble)",
                       description="Score every window of every recording; re-run the same command to resume. "
                                   "Every option defaults to the run's predict section (recipes/README.md), "
                                   "then to the value shown.")
    p.add_argument("model", type=Path, help="checkpoint (.pt/.onnx), run dir (best.pt), CV dir (fold*/best.pt)")
    p.add_argument("inputs", nargs="+", type=Path, help="audio files, folders (recursive) or manifests (.csv/.txt)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output directory")
    p.add_argument("--format", "-f", dest="formats", type=_str_list, default=None,
                   help=f"comma-separated: {', '.join(FORMATS)} (default submission,table)")
    p.add_argument("--table-format", choices=TABLE_FORMATS, default=None, help="wide table file type (csv)")
    p.add_argument("--threshold", type=float, default=None, help="minimum score of a detection (0.5)")
    p.add_argument("--top-k", type=int, default=None, help="at most K detections per window")
    _add_scoring_args(p)
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="openvino only: bf16 is ~2x faster on CPUs with AVX512-BF16/AMX, scores approximate; int8 "
                        "quantizes the models (pip install 'nfaudio[int8]'), calibrated on --calibration")
    p.add_argument("--calibration", action="append", default=None, metavar="PATH",
                   help="int8: audio files, folders or manifests to calibrate on, a few minutes like the recordings "
                        "to score (repeatable)")
    p.add_argument("--calibration-seconds", type=float, default=None, metavar="S",
                   help="int8: seconds of calibration audio used (300)")
    p.add_argument("--int8-tolerance", type=float, default=None, metavar="T",
                   help="int8: refuse (exit 2) when int8 and fp32 probabilities on the calibration audio differ by "
                        "more than T (0.1)")
    p.add_argument("--int8-warn", action="store_true", default=None,
                   help="int8: above the tolerance, warn loudly and score with int8 anyway")
    p.add_argument("--tta-shift", type=float, default=None, metavar="S",
                   help="time-shift TTA: average each window with the windows shifted by -S and +S seconds")
    p.add_argument("--smoothing", type=float, default=None, help="neighbour-smoothing weight in [0, 0.5] (0)")
    p.add_argument("--decode-timeout", type=float, default=None, metavar="S",
                   help="a decode worker stuck on a file for S + F x duration seconds is killed and the file goes "
                        "to errors.csv (60; not with --workers 0)")
    p.add_argument("--decode-timeout-factor", type=float, default=None, metavar="F",
                   help="decode timeout seconds per second of audio (1.0)")
    p.add_argument("--min-duration", type=float, default=None, help="shorter files go to errors.csv (0.5 s)")
    p.add_argument("--cluster", default=None, metavar="SPEC",
                   help="score on a Dask cluster: local:N (N worker processes here), tcp://HOST:PORT (a running "
                        "scheduler) or a scheduler file (JSON); needs pip install 'nfaudio[dask]'")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    cli_selftrain.add_parsers(sub, _add_recipe_args, _add_scoring_args)  # pseudo-label, self-train
    cli_study.add_parsers(sub, _add_recipe_args)  # study bn-cost|agc
    cli_embed.add_parsers(sub, _add_scoring_args)  # embed
    cli_probe.add_parsers(sub)  # probe train|predict|suggest|attach
    cli_search.add_parsers(sub)  # index build, search

    p = sub.add_parser("export", help="export a model (log-mel frontend included) to ONNX")
    p.add_argument("model", type=Path, help="checkpoint, run dir or CV dir")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", "-o", type=Path, required=True, help="FILE.onnx (a folder for a CV run: fold<k>.onnx)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch parity check")
    p.add_argument("--embedding", action="store_true", help="add the embedding output (for nfaudio embed)")

    p = sub.add_parser("recipes", help="list the shipped recipes (pass a name to --recipe), or print one")
    p.add_argument("name", nargs="?", default=None, help="print this recipe's YAML (to copy and edit)")

    p = sub.add_parser("list-models", help="list the model names create_model accepts")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'eca_*'")
    return parser


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 logs progress and prints results."""
    return int(os.environ.get("RANK", "0") or 0)


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet or _rank() > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _cmd_train(args: argparse.Namespace) -> int:
    from nfaudio.config import load_config
    from nfaudio.training import train_from_config

    if args.recipe is None:
        raise _UsageError("train needs --recipe RECIPE.yaml")
    cfg = load_config(args.recipe, args.overrides)
    result = train_from_config(cfg, args.out, resume=args.resume)
    if _rank() > 0:
        return 0
    if result.best_score is None:
        print(f"trained {result.best_epoch} epochs without validation; run in {args.out}")
    else:
        print(f"best {cfg.train.metric} {result.best_score:.4f} at epoch {result.best_epoch}; run in {args.out}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_cv(args: argparse.Namespace) -> int:
    from nfaudio.config import load_config
    from nfaudio.cv import merge_cv, run_cv
    from nfaudio.rundir import RunDir

    if args.merge:
        cfg = load_config(args.recipe, args.overrides) if args.recipe else RunDir(args.out).read_config()
        if cfg is None:
            raise _UsageError(f"cv --merge: {args.out} holds no {RunDir.CONFIG}; pass --recipe")
        m = merge_cv(cfg, args.out)
    elif args.recipe is None:
        raise _UsageError("cv needs --recipe RECIPE.yaml")
    else:
        m = run_cv(load_config(args.recipe, args.overrides), args.out, folds=args.folds, full=args.full)
    if _rank() > 0:
        return 0
    if not m["folds"]:
        print(f"no fold finished yet (folds {m['unfinished_folds']} are trained elsewhere or not started)")
        return 0
    name = m["metric"]
    for k, scores in m["per_fold"].items():
        print(f"fold {k}: " + ", ".join(f"{n} {v:.4f}" for n, v in scores.items()))
    print(f"mean {name} {m['mean'][name]:.4f} +- {m['std'][name]:.4f}; pooled OOF {m['pooled_oof'][name]:.4f}")
    if m.get("unfinished_folds"):
        print(f"folds {m['unfinished_folds']} are not finished yet: these figures cover folds {m['folds']}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from nfaudio.metrics import score_submission

    solution = pd.read_csv(args.solution, dtype={args.id_column: str})
    submission = pd.read_csv(args.submission, dtype={args.id_column: str})
    score = score_submission(solution, submission, args.metric, id_col=args.id_column)
    print(f"{args.metric} {score:.6f}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nfaudio.demo import run_demo

    summary = run_demo(args.out, seed=args.seed, fast=args.fast)
    cv = summary["cv"]
    name = cv["metric"]
    for k, scores in cv["per_fold"].items():
        print(f"demo CV fold {k}: {name} {scores[name]:.4f}")
    print(f"demo CV mean {name} {cv['mean'][name]:.4f}; pooled OOF {cv['pooled_oof'][name]:.4f}")
    print(f"demo: macro ROC-AUC {summary['macro_auc']:.4f}, padded cmAP {summary['padded_cmap']:.4f} "
          f"on {summary['n_windows']} soundscape windows in {summary['seconds']:.0f} s; outputs in {args.out}")
    return 0


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# Flags of `nfaudio predict` that are not keys of the recipe's predict section.
PREDICT_RUN_FLAGS = ("model", "inputs", "out", "overwrite", "no_progress")


def _cmd_predict(args: argparse.Namespace) -> int:
    from nfaudio.predict import Predictor, output_options, predictor_options

    settings = predict_settings(args)
    try:  # a missing optional runtime (onnxruntime, openvino, dask) is a one-line error
        predictor = Predictor.from_checkpoint(args.model, **predictor_options(settings))
        summary = predictor.predict_to_dir(args.inputs, args.out, **output_options(settings),
                                           overwrite=args.overwrite, progress=False if args.no_progress else None)
    except ImportError as err:
        raise _UsageError(str(err)) from err
    print(summary)
    return 1 if summary.n_failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from nfaudio.export import export_onnx
    from nfaudio.rundir import RunDir, find_checkpoints

    paths = find_checkpoints(args.model)
    if len(paths) == 1 and args.out.suffix == ".onnx":
        outs = [(paths[0], args.out)]
    else:
        outs = [(p, args.out / f"{p.parent.name if p.name == RunDir.BEST else p.stem}.onnx") for p in paths]
    try:
        for src, dst in outs:
            export_onnx(src, dst, opset=args.opset, check=not args.no_check, embedding=args.embedding)
            print(f"exported {src} -> {dst}")
    except ImportError as err:
        raise _UsageError(str(err)) from err
    return 0


def _cmd_list_models(args: argparse.Namespace) -> int:
    from nfaudio.models import list_models

    for name in list_models(args.pattern):
        print(name)
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from nfaudio.recipes import describe_recipe, list_recipes, shipped_recipe

    if args.name is not None:
        path = shipped_recipe(args.name)
        if path is None:
            raise _UsageError(f"no shipped recipe '{args.name}'; shipped: {', '.join(list_recipes())}")
        print(path.read_text(encoding="utf-8"), end="")
        return 0
    names = list_recipes()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe_recipe(shipped_recipe(name))}")
    return 0


class _UsageError(Exception):
    pass


COMMANDS = {"train": _cmd_train, "cv": _cmd_cv, "evaluate": _cmd_evaluate, "demo": _cmd_demo,
            "list-models": _cmd_list_models, "predict": _cmd_predict, "export": _cmd_export, "recipes": _cmd_recipes,
            **cli_selftrain.COMMANDS, **cli_study.COMMANDS, **cli_embed.COMMANDS,
            **cli_probe.COMMANDS, **cli_search.COMMANDS}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input rather than a bug (imported lazily: nothing at import time)."""
    from nfaudio.audio import AudioError
    from nfaudio.config import ConfigError
    from nfaudio.manifest import ManifestError
    from nfaudio.models import PretrainedWeightsError

    return (_UsageError, ConfigError, ManifestError, AudioError, PretrainedWeightsError, FileNotFoundError,
            FileExistsError, ValueError)


# The arguments of each command that are paths the user gave (dest -> how the message names it).
_PATH_ARGS: dict[str, dict[str, str]] = {
    "train": {"recipe": "--recipe", "out": "--out"}, "cv": {"recipe": "--recipe", "out": "--out"},
    "evaluate": {"solution": "solution", "submission": "submission"}, "demo": {"out": "--out"},
    "predict": {"model": "model", "inputs": "input", "out": "--out", "calibration": "--calibration"},
    "export": {"model": "model", "out": "--out"},
    "pseudo-label": {"model": "model", "inputs": "input", "out": "--out", "recipe": "--recipe"},
    "embed": {"model": "model", "inputs": "input", "out": "--out"},
    "probe": {"embeddings": "--embeddings", "labels": "--labels", "probe": "probe", "model": "model", "out": "--out"},
    "index": {"store": "DIR"}, "search": {"store": "DIR", "query": "QUERY", "out": "--out", "model": "--model"},
    "self-train": {"recipe": "--recipe", "unlabelled": "--unlabelled", "out": "--out", "eval_labels": "--eval-labels"},
}
# Errors of writing the output that carry no file name but cannot be a bug: disk full, quota, read-only disk.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _forms(path: str | os.PathLike) -> set[Path]:
    """A path as given (made absolute) and with its symbolic links resolved."""
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def _path_error(args: argparse.Namespace, exc: OSError) -> str | None:
    """The one-line message for an OS-level error on a path the user gave (or on a file under it, or on writing
    the output), or None when the error is not about such a path (then it is a bug)."""
    given = []
    for dest, label in _PATH_ARGS.get(args.command, {}).items():
        value = getattr(args, dest, None)
        given += [(label, Path(v)) for v in (value if isinstance(value, list) else [value]) if v is not None]
    reason = exc.strerror or str(exc)
    for name in (exc.filename, exc.filename2):
        if not isinstance(name, (str, bytes, os.PathLike)):  # None, or an int (a file descriptor)
            continue
        name = os.fsdecode(name)
        failed = _forms(name)
        for label, path in given:
            mine = _forms(path)
            if any(f in p.parents for p in mine for f in failed) and os.path.isfile(name):
                return f"{label} {path}: {name} is not a directory"  # mkdir(parents=True) under a file
            if any(p == f or p in f.parents for p in mine for f in failed):
                return f"{label} {path}: {reason}" + ("" if mine & failed else f" ({name})")
    out = getattr(args, "out", None)
    if exc.errno in _OUTPUT_ERRNOS and out is not None and "out" in _PATH_ARGS.get(args.command, {}):
        return f"--out {out}: {reason}"
    return None


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
        if args.debug:
            raise
        message = _path_error(args, exc) if isinstance(exc, OSError) else None
        if message is None and isinstance(exc, _user_errors()):
            message = str(exc)
        if message is None:
            raise
        for line in message.splitlines() or [""]:  # a manifest's problems: one line each
            print(f"nfaudio {args.command}: error: {line}", file=sys.stderr)
        return 2
