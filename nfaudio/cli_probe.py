"""``nfaudio probe train|predict|suggest|attach`` (parsers and handlers; :mod:`nfaudio.cli` adds them)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nfaudio.choices import METRIC_NAMES

__all__ = ["COMMANDS", "add_parsers"]

log = logging.getLogger("nfaudio")

KINDS = ("logreg", "mlp")  # nfaudio.embed.probe.KINDS (not imported here: the parser stays light)
TASKS = ("auto", "multiclass", "multilabel")
STRATEGIES = ("uncertain", "top")  # nfaudio.embed.active.STRATEGIES


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``probe`` and its subcommands to ``nfaudio``'s subparsers."""
    p = sub.add_parser("probe", help="shallow classifiers on an embedding store: train, predict, suggest, attach",
                       description="Logistic regression or a small MLP (scikit-learn) on the frozen embeddings of "
                                   "an `nfaudio embed` store, cross-validated by file; scores stores without audio.")
    ps = p.add_subparsers(dest="probe_command", metavar="SUBCOMMAND", required=True)

    t = ps.add_parser("train", help="cross-validate and fit a probe on a store's labelled windows",
                      description="Writes OUT/probe.json + probe.npz (fit on every labelled window), OUT/oof.csv "
                                  "and OUT/metrics.json (per fold, mean, pooled out-of-fold, as nfaudio cv).")
    t.add_argument("--embeddings", "-e", type=Path, required=True, help="the embedding store (nfaudio embed --out)")
    t.add_argument("--labels", "-l", type=Path, required=True,
                   help="CSV: file,label[,start_s,end_s]; label 'a;b' multi-label, 'nocall' none, empty skipped")
    t.add_argument("--out", "-o", type=Path, required=True, help="the probe's directory")
    t.add_argument("--kind", choices=KINDS, default="logreg", help="logreg (default) or mlp")
    t.add_argument("--task", choices=TASKS, default="auto",
                   help="multiclass (softmax), multilabel (a sigmoid per class); auto: multiclass when every "
                        "labelled window has exactly one class")
    t.add_argument("--folds", type=int, default=5, help="CV folds grouped by file (5; 0: no CV)")
    t.add_argument("--metric", choices=METRIC_NAMES, default=None,
                   help="CV metric (accuracy for multiclass, macro_auc for multilabel)")
    t.add_argument("--C", dest="C", type=float, default=1.0, help="logreg: inverse L2 strength (1.0)")
    t.add_argument("--hidden", type=_ints, default=[256], help="mlp: hidden layer widths, e.g. 256,64 (256)")
    t.add_argument("--alpha", type=float, default=1e-4, help="mlp: L2 penalty (1e-4)")
    t.add_argument("--max-iter", type=int, default=None, help="solver iterations (logreg 1000, mlp 500)")
    t.add_argument("--seed", type=int, default=0)

    q = ps.add_parser("predict", help="score every window of a store with a probe (no audio read)",
                      description="Writes OUT/scores.csv: file,start_s,end_s and one probability column per class "
                                  "(nfaudio predict's table), one row per stored window.")
    q.add_argument("probe", type=Path, help="the probe's directory (nfaudio probe train --out)")
    q.add_argument("--embeddings", "-e", type=Path, required=True, help="the embedding store")
    q.add_argument("--out", "-o", type=Path, required=True, help="output directory")

    s = ps.add_parser("suggest", help="the windows to label next (uncertain, or top-scoring for a class)",
                      description="Writes OUT (CSV: rank,file,start_s,end_s,class,score,label) and OUT with suffix "
                                  ".selections.txt (Raven); fill in `label` and pass the CSV to probe train.")
    s.add_argument("probe", type=Path, help="the probe's directory")
    s.add_argument("--embeddings", "-e", type=Path, required=True, help="the embedding store")
    s.add_argument("--out", "-o", type=Path, required=True, help="the suggestions CSV")
    s.add_argument("--k", "-k", type=int, default=20, help="how many windows (20)")
    s.add_argument("--strategy", choices=STRATEGIES, default="uncertain",
                   help="uncertain: scores nearest 0.5; top: highest scores of --target")
    s.add_argument("--target", default=None, help="the class for --strategy top")

    a = ps.add_parser("attach", help="a logreg probe as a model's head: a checkpoint for predict and export",
                      description="Writes a checkpoint whose clip scores are the probe's on the model's embedding "
                                  "(softmax or sigmoid, the probe's classes); nfaudio predict / export use it.")
    a.add_argument("probe", type=Path, help="the probe's directory (logreg)")
    a.add_argument("model", type=Path, help="the .pt checkpoint (or run dir) that made the probe's store")
    a.add_argument("--out", "-o", type=Path, required=True, help="the new checkpoint (.pt)")


def _cmd_probe(args: argparse.Namespace) -> int:
    from nfaudio.embed.store import open_store

    cmd = args.probe_command
    if cmd == "train":
        from nfaudio.embed.probe_run import train_probe

        res = train_probe(open_store(args.embeddings), args.labels, args.out, kind=args.kind, task=args.task,
                          n_folds=args.folds, metric=args.metric, C=args.C, hidden=args.hidden, alpha=args.alpha,
                          max_iter=args.max_iter, seed=args.seed)
        pr = res.probe
        print(f"{pr.kind} probe ({pr.task}, {len(pr.classes)} classes, {pr.settings['n_windows']} labelled windows) "
              f"in {args.out}")
        if res.metrics:
            m, name = res.metrics, res.metrics["metric"]
            for k, scores in m["per_fold"].items():
                print(f"fold {k}: " + ", ".join(f"{n} {_fmt(v)}" for n, v in scores.items()))
            print(f"mean {name} {_fmt(m['mean'][name])} +- {_fmt(m['std'][name])}; "
                  f"pooled OOF {_fmt(m['pooled_oof'][name])}")
        return 0
    from nfaudio.embed.probe import load_probe

    probe = load_probe(args.probe)
    if cmd == "attach":
        from nfaudio.embed.attach import attach_probe
        from nfaudio.rundir import find_checkpoints

        paths = find_checkpoints(args.model)
        if len(paths) != 1:
            raise ValueError(f"{args.model}: {len(paths)} checkpoints (a CV run); pass one fold's best.pt")
        print(f"attached {args.probe} to {paths[0]} -> {attach_probe(probe, paths[0], args.out)}")
        return 0
    from nfaudio.embed.probe_run import predict_store, score_store

    store = open_store(args.embeddings)
    if cmd == "predict":
        print(f"scored {store.num_rows} windows -> {predict_store(probe, store, args.out)}")
        return 0
    from nfaudio.embed.active import suggest, write_suggestions

    table = suggest(score_store(probe, store), args.k, args.strategy, args.target)
    paths = write_suggestions(table, args.out)
    print(f"{len(table)} windows to label -> {', '.join(map(str, paths))}")
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


COMMANDS = {"probe": _cmd_probe}
