"""Does self-training help? Noisy-student rounds on the synthetic target domain (issue 11).

For each seed: a synthetic BirdCLEF-style world (``nfaudio.synth``) whose labelled training clips are close,
clean focal recordings and whose soundscapes come from the target domain (``TargetDomain``: distant, filtered,
reverberant calls, up to 5 species at once, -6..6 dB SNR, other background). ``--n-unlabelled`` target-domain
soundscapes form the unlabelled pool; ``--n-eval`` other labelled ones are the evaluation set, never seen in
training. Then ``nfaudio.selftrain.self_train``: round 0 is the clips-only baseline (the demo recipe, one
train/validation split), rounds 1..K pseudo-label the pool with the previous round's model and train a noisier
student on clips + pseudo-labels (recipe section ``pseudo``, mode ``mix`` by default: the 2025 winner's recipe).
Every round is scored on the evaluation soundscapes (macro ROC-AUC over classes with positives, padded cmAP).

Writes ``benchmarks/results/selftrain.json``: per seed and round the scores, the mean over seeds per round and
the gain of each round over round 0.

Usage:
    python benchmarks/selftrain.py [--seeds 0,1] [--rounds 3] [--epochs 30] [--power 1.5] [--mode mix]
        [--work /tmp/nfaudio-selftrain] [--out benchmarks/results/selftrain.json]
Smoke test:
    python benchmarks/selftrain.py --seeds 0 --rounds 1 --epochs 1 --clips-per-species 4 --n-unlabelled 2 \\
        --n-eval 2 --out /tmp/selftrain-smoke.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import machine

from nfaudio.config import apply_overrides, from_dict
from nfaudio.demo import demo_config
from nfaudio.selftrain.loop import self_train
from nfaudio.synth import SynthConfig, generate_dataset
from nfaudio.synth.domain import TargetDomain

SCORES = ("macro_auc", "padded_cmap", "val_score")


def machine_info() -> dict:
    import torch

    return {**machine.machine_info("torch"), "torch_threads": torch.get_num_threads()}


def write_result(args: argparse.Namespace, argv: list[str] | None, started: float, **fields: object) -> dict:
    """Write ``args.out``: the command line, date, machine, note and settings, then ``fields`` and the seconds
    since ``started``; returns what was written."""
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "note": args.note, "settings": vars(args), **fields,
              "seconds": time.perf_counter() - started}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def run_seed(seed: int, args: argparse.Namespace) -> list[dict]:
    work = Path(args.work) / f"seed{seed}"
    synth = SynthConfig(seed=seed, clips_per_species=args.clips_per_species, clip_seconds=(2.0, 6.0),
                        n_soundscapes=args.n_eval, n_unlabeled_soundscapes=args.n_unlabelled,
                        target_domain=TargetDomain())
    data = generate_dataset(work / "data", synth)
    cfg = demo_config(data.root, seed=seed)
    overrides = [f"train.epochs={args.epochs}", f"cv.n_folds={args.val_folds}", f"pseudo.mode={args.mode}",
                 *args.set]
    cfg = from_dict(apply_overrides(cfg.to_dict(), overrides))
    table = self_train(cfg, [data.unlabeled], work / "rounds", rounds=args.rounds, power=args.power,
                       floor=args.floor, eval_audio=[data.root / "test_soundscapes"],
                       eval_labels=data.soundscape_labels, predict_kw={"batch_size": 32})
    rows = table.to_dict(orient="records")
    for row in rows:
        row["seed"] = seed
    return rows


def summarise(rows: list[dict], rounds: int) -> list[dict]:
    out = []
    for k in range(rounds + 1):
        here = [r for r in rows if r["round"] == k]
        entry = {"round": k, "n_seeds": len(here)}
        for name in SCORES:
            values = [float(r[name]) for r in here if name in r]
            if values:
                entry[f"{name}_mean"] = statistics.fmean(values)
                entry[f"{name}_per_seed"] = values
        out.append(entry)
    base = out[0]
    for entry in out:
        for name in ("macro_auc", "padded_cmap"):
            if f"{name}_mean" in entry:
                entry[f"{name}_gain"] = entry[f"{name}_mean"] - base[f"{name}_mean"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--clips-per-species", type=int, default=30)
    p.add_argument("--n-unlabelled", type=int, default=40, help="unlabelled one-minute target soundscapes")
    p.add_argument("--n-eval", type=int, default=10, help="labelled one-minute target soundscapes (evaluation)")
    p.add_argument("--val-folds", type=int, default=5, help="cv.n_folds: 1/k of the clips validate each round")
    p.add_argument("--power", type=float, default=1.5)
    p.add_argument("--floor", type=float, default=0.0)
    p.add_argument("--mode", default="mix", choices=("mix", "rows"))
    p.add_argument("--set", action="append", default=[], help="extra dotted recipe overrides for every round")
    p.add_argument("--work", default="/tmp/nfaudio-selftrain")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "selftrain.json"))
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        rows += run_seed(seed, args)
        print(json.dumps([{k: r[k] for k in ("seed", "round", *SCORES) if k in r} for r in rows]), flush=True)
    result = write_result(args, argv, t0, summary=summarise(rows, args.rounds), rows=rows)
    for entry in result["summary"]:
        print(entry, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
