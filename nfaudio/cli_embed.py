"""``nfaudio embed`` (parser and handler; :mod:`nfaudio.cli` adds it)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from nfaudio.choices import FOLD_MODES, PRECISIONS
from nfaudio.cli_args import predict_settings

__all__ = ["COMMANDS", "EMBED_RUN_FLAGS", "add_parsers"]

log = logging.getLogger("nfaudio")

# Flags of `nfaudio embed` that are not keys of the recipe's predict section (they map to run_embedding).
EMBED_RUN_FLAGS = ("model", "inputs", "out", "fold_mode", "scores", "shard_rows", "overwrite", "no_progress")


def add_parsers(sub: argparse._SubParsersAction, add_scoring_args: Callable) -> None:
    """Add the command to ``nfaudio``'s subparsers."""
    p = sub.add_parser("embed", help="per-window embeddings of recordings into a columnar store (parquet shards)",
                       description="Write DIR/embeddings.json and DIR/shards/part-*.parquet (file, start_s, end_s, "
                                   "embedding[, one score column per class]) and DIR/errors.csv, shard by shard as "
                                   "files finish; re-run the same command to resume. Windows, backend and workers "
                                   "as in nfaudio predict (defaults from the run's predict section).")
    p.add_argument("model", type=Path, help="checkpoint (.pt, or .onnx exported with --embedding), run dir, CV dir")
    p.add_argument("inputs", nargs="+", type=Path, help="audio files, folders (recursive) or manifests (.csv/.txt)")
    p.add_argument("--out", "-o", type=Path, required=True, help="the store's directory")
    add_scoring_args(p)
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="openvino only: bf16 (approximate)")
    p.add_argument("--fold-mode", choices=FOLD_MODES, default="mean",
                   help="a CV run's fold embeddings: mean (D wide, default) or concat (folds x D, fold order)")
    p.add_argument("--scores", action="store_true", help="also store each window's class probabilities")
    p.add_argument("--shard-rows", type=int, default=8192, help="windows per shard; bounds the memory (8192)")
    p.add_argument("--min-duration", type=float, default=None, help="shorter files go to errors.csv (0.5 s)")
    p.add_argument("--decode-timeout", type=float, default=None, metavar="S",
                   help="a decode worker stuck on a file for S + F x duration seconds is killed (60)")
    p.add_argument("--decode-timeout-factor", type=float, default=None, metavar="F",
                   help="decode timeout seconds per second of audio (1.0)")
    p.add_argument("--overwrite", action="store_true", help="discard a store in --out instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_embed(args: argparse.Namespace) -> int:
    from nfaudio.predict import Predictor, predictor_options

    settings = predict_settings(args)
    if settings.tta_shift:
        log.info("embeddings are per window: the run's tta_shift %g is not applied", settings.tta_shift)
        settings = dataclasses.replace(settings, tta_shift=0.0)
    try:  # a missing optional runtime (onnxruntime, openvino) is a one-line error
        predictor = Predictor.from_checkpoint(args.model, **predictor_options(settings))
        summary = predictor.embed_to_dir(args.inputs, args.out, fold_mode=args.fold_mode, scores=args.scores,
                                         shard_rows=args.shard_rows, overwrite=args.overwrite,
                                         progress=False if args.no_progress else None)
    except ImportError as err:
        raise ValueError(str(err)) from err
    print(str(summary).replace("files scored", "files embedded"))
    return 1 if summary.n_failed else 0


COMMANDS = {"embed": _cmd_embed}
