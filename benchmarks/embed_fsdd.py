"""Probes on frozen embeddings vs a CNN from scratch, few-shot, on real audio: FSDD, one held-out speaker (issue 12).

For each held-out speaker (a fold of FSDD's leave-one-speaker-out manifest):

1. the fsdd recipe's nfaudio_small is trained on the other five speakers (``nfaudio cv --folds k``,
   ``train.select=last``: no epoch is chosen on the held-out speaker);
2. the held-out speaker's 500 clips are embedded with it (``Predictor.embed_to_dir``, 1 s windows, with the
   source model's own digit scores); a clip is its first window (start 0; what the CNN's ``eval_crop: start`` sees);
3. for ``shots`` in 1, 5, 20 and a few seeds, ``shots`` clips per digit of that speaker are "labelled"; a
   logistic-regression probe (``nfaudio.embed.probe_run.train_probe``, no CV) is trained on their embeddings and a
   fresh nfaudio_small is trained from scratch on the same clips (the fsdd recipe with its augmentation, no
   validation, the same budget at every shot count: ``--scratch-epochs`` epochs of the labelled clips repeated to
   ``--scratch-epoch-examples``, i.e. 10 x 10 steps of batch 64 by default); both are scored on the
   speaker's other clips (accuracy), next to the source model's own head on the same clips (it was trained on
   the same ten digits, by other speakers);
4. search precision@10: for every clip of the held-out speaker, the fraction of its 10 nearest other clips
   (cosine on the embeddings) that say the same digit.

Writes ``benchmarks/results/embed_fsdd.json``.

Usage:
    python benchmarks/embed_fsdd.py [--folds 1,2,3] [--epochs 10] [--seeds 2] [--work /tmp/nfaudio-embed-fsdd]
Smoke test:
    python benchmarks/embed_fsdd.py --folds 1 --epochs 1 --seeds 1 --limit 1200 --shots 1,5 \
        --scratch-epochs 1 --scratch-epoch-examples 64 --out /tmp/e.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import machine
import numpy as np
import pandas as pd
import torch

from nfaudio.config import apply_overrides, from_dict, load_config
from nfaudio.cv import run_cv
from nfaudio.data import load_data
from nfaudio.embed.probe_run import score_store, train_probe
from nfaudio.embed.search import normalise
from nfaudio.embed.store import open_store
from nfaudio.manifest import Manifest
from nfaudio.predict import Predictor
from nfaudio.training import fit


def precision_at(emb: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean over queries of the fraction of the ``k`` nearest other rows (cosine) with the query's label."""
    x = normalise(emb)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return float(np.mean(labels[top] == labels[:, None]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/fsdd/metadata.csv")
    p.add_argument("--folds", default="1,2,3", help="held-out speakers (fold numbers 1-6)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the five-speaker source model")
    p.add_argument("--shots", default="1,5,20")
    p.add_argument("--seeds", type=int, default=2, help="draws of the labelled clips per shot count")
    p.add_argument("--scratch-epochs", type=int, default=10, help="epochs of a scratch CNN")
    p.add_argument("--scratch-epoch-examples", type=int, default=640,
                   help="a scratch epoch: the labelled clips repeated to at least this many (10 steps of 64)")
    p.add_argument("--limit", type=int, default=0, help="smoke test: keep this many manifest rows")
    p.add_argument("--work", default="/tmp/nfaudio-embed-fsdd")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "embed_fsdd.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = [f"data.manifest={args.data}", "data.validate=false", "train.select=last", "train.progress=false"]
    cfg = load_config("fsdd", [*base, f"train.epochs={args.epochs}"])
    manifest = load_data(cfg)
    if args.limit:
        keep = manifest.df.groupby("fold", group_keys=False).sample(n=args.limit // 6, random_state=0).index
        manifest = manifest.subset(np.isin(np.arange(len(manifest)), keep))
        small = work / "metadata.csv"
        manifest.df[["path", "primary_label", "fold", "group"]].rename(
            columns={"path": "filename", "primary_label": "label"}).to_csv(small, index=False)
        base[0] = f"data.manifest={small}"
        cfg = load_config("fsdd", [*base, f"train.epochs={args.epochs}"])
    df = manifest.df
    shots_list = [int(s) for s in args.shots.split(",")]
    rows, search = [], []
    for k in [int(f) for f in args.folds.split(",")]:
        tk = time.perf_counter()
        run_cv(cfg, work / "source", folds=[k])
        src_acc = json.loads((work / "source" / "metrics.json").read_text())["per_fold"][str(k)]["accuracy"]
        speaker = df[df["fold"] == k].reset_index(drop=True)
        files = speaker["path"].astype(str).tolist()
        digit = dict(zip(files, speaker["primary_label"].astype(str)))
        predictor = Predictor.from_checkpoint(work / "source" / f"fold{k}", window=1.0, batch_size=128,
                                              min_duration=0.01, num_workers=0)
        store_dir = work / f"store{k}"
        predictor.embed_to_dir(files, store_dir, scores=True, overwrite=True, progress=False)
        store = open_store(store_dir)
        keys = store.keys()
        first = np.flatnonzero(keys["start_s"].to_numpy() == 0.0)
        clip_files = keys["file"].to_numpy()[first]
        clip_digits = np.array([digit[f] for f in clip_files])
        emb = store.embeddings()[first]
        head = store.scores().iloc[first]
        p10 = precision_at(emb, clip_digits, 10)
        search.append({"fold": k, "speaker": speaker["group"].iloc[0], "precision_at_10": p10, "clips": len(first),
                       "chance": float(np.mean([(np.sum(clip_digits == d) - 1) / (len(first) - 1)
                                                for d in clip_digits]))})
        print(json.dumps(search[-1]), flush=True)
        for shots in shots_list:
            for seed in range(args.seeds):
                rng = np.random.default_rng(1000 * k + 10 * shots + seed)
                train = np.concatenate([rng.choice(np.flatnonzero(clip_digits == d), size=shots, replace=False)
                                        for d in sorted(set(clip_digits))])
                test = np.setdiff1d(np.arange(len(first)), train)
                labels_csv = work / f"labels_{k}_{shots}_{seed}.csv"
                pd.DataFrame({"file": clip_files[train], "start_s": 0.0, "end_s": 1.0,
                              "label": clip_digits[train]}).to_csv(labels_csv, index=False)
                tp = time.perf_counter()
                probe = train_probe(store, labels_csv, None, kind="logreg", n_folds=0).probe
                probe_s = time.perf_counter() - tp
                scores = score_store(probe, store).iloc[first]
                pred = np.asarray(probe.classes)[scores.to_numpy().argmax(1)]
                probe_acc = float(np.mean(pred[test] == clip_digits[test]))
                head_pred = np.asarray(store.classes)[head.to_numpy().argmax(1)]
                head_acc = float(np.mean(head_pred[test] == clip_digits[test]))
                # the CNN from scratch on the same labelled clips
                n_train = len(train)
                picked = manifest.subset(np.isin(df["path"].astype(str).to_numpy(), clip_files[train]))
                reps = int(np.ceil(args.scratch_epoch_examples / n_train))  # an "epoch": the clips repeated
                tiled = pd.concat([picked.df.assign(row_id=picked.df["row_id"] + f"#{r}") for r in range(reps)],
                                  ignore_index=True)
                train_set = Manifest(tiled, list(picked.classes))
                epochs = args.scratch_epochs
                scfg = from_dict(apply_overrides(cfg.to_dict(), [f"train.epochs={epochs}"]))  # 2 loader workers
                ts = time.perf_counter()
                fit(scfg, train_set, None, work / f"scratch_{k}_{shots}_{seed}", seed=seed)
                scratch_s = time.perf_counter() - ts
                sp = Predictor.from_checkpoint(work / f"scratch_{k}_{shots}_{seed}" / "best.pt", window=1.0,
                                               batch_size=128, min_duration=0.01, num_workers=0)
                test_files = clip_files[test].tolist()
                table = sp.predict(test_files)
                table = table[table.index.get_level_values("start_s") == 0.0]
                by_file = dict(zip(table.index.get_level_values("file"), np.asarray(sp.classes)[table.to_numpy()
                                                                                               .argmax(1)]))
                scratch_acc = float(np.mean([by_file[f] == digit[f] for f in test_files]))
                rows.append({"fold": k, "shots": shots, "seed": seed, "train_clips": int(n_train),
                             "test_clips": int(len(test)), "probe_accuracy": probe_acc,
                             "scratch_accuracy": scratch_acc, "source_head_accuracy": head_acc,
                             "scratch_epochs": epochs, "probe_seconds": probe_s, "scratch_seconds": scratch_s})
                print(json.dumps(rows[-1]), flush=True)
        search[-1]["source_accuracy_all_clips"] = src_acc
        search[-1]["seconds"] = time.perf_counter() - tk
    summary = []
    for shots in shots_list:
        sel = [r for r in rows if r["shots"] == shots]
        entry = {"shots": shots}
        for name in ("probe_accuracy", "scratch_accuracy", "source_head_accuracy"):
            per_fold = [statistics.fmean(r[name] for r in sel if r["fold"] == k) for k in sorted({r["fold"]
                                                                                                   for r in sel})]
            entry[name] = statistics.fmean(per_fold)
            entry[name + "_per_fold"] = per_fold
        summary.append(entry)
    result = {"benchmark": "embed_fsdd", "command": "python benchmarks/embed_fsdd.py " + " ".join(argv or sys.argv[1:]),
              "settings": vars(args), "summary": summary,
              "precision_at_10_mean": statistics.fmean(s["precision_at_10"] for s in search),
              "search": search, "rows": rows, "seconds": time.perf_counter() - t0,
              "machine": {**machine.machine_info("torch"), "threads": torch.get_num_threads()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for entry in summary:
        print({k: v for k, v in entry.items() if not k.endswith("per_fold")}, flush=True)
    print("precision@10", result["precision_at_10_mean"], "seconds", round(result["seconds"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
