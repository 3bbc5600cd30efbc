"""int8 on trained weights: does post-training quantization keep a trained ensemble's scores and its metric?

``benchmarks/predict_whole.py`` measures int8 speed on randomly initialised ensembles, where the guard refuses
(their near-constant scores are what int8's rounding moves most). This script asks the question a user has: on a
model that has learned something, how far do the int8 scores move, and what happens to the task metric?

It trains the built-in demo (``nfaudio.demo.run_demo``: synthetic BirdCLEF-style data, a 2-fold CV of
``nfaudio_small`` with an attention SED head and AGC), or reuses one given by ``--demo``, then scores the demo's
labelled test soundscapes with the fold ensemble three ways in this process, one after the other: torch fp32
(the reference), OpenVINO fp32 and OpenVINO int8 (NNCF, calibrated on ``--calibration-seconds`` of the demo's
training clips, which are not the scored soundscapes). Reported side by side: macro ROC-AUC and padded cmAP of
each against the soundscape labels, the largest absolute probability difference and the per-class Spearman rank
correlation of each backend against torch fp32, the guard's own figures on the calibration windows (per fold, from
the int8 cache's ``meta.json``), and the scoring x real time of each run (the run summary's, measured in the same
process one after the other; the first scoring run also warms the page cache).

Usage:
    flock /tmp/nfaudio-heavy.lock python benchmarks/int8_trained.py [--demo runs/demo] [--work /tmp/nfaudio-int8]
        [--calibration-seconds 120] [--tolerance 0.1] [--note "..."]

Writes ``benchmarks/results/int8_trained.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

import machine
import numpy as np
import pandas as pd
from predict_whole import int8_guard

from nfaudio.metrics import score_submission
from nfaudio.predict import Predictor
from nfaudio.predict_run import run_prediction
from nfaudio.quantize import Int8Options, rank_correlation


def compare_scores(got: pd.DataFrame, ref: pd.DataFrame) -> dict:
    """Max |got - ref| probability and per-class Spearman of ``got`` against ``ref`` (rows matched by row_id)."""
    got = got.set_index("row_id").loc[ref["row_id"]]
    a, b = got.to_numpy(dtype=float), ref.set_index("row_id").to_numpy(dtype=float)
    rho = rank_correlation(a, b)
    finite = rho[np.isfinite(rho)]
    return {"max_abs_prob_diff": round(float(np.abs(a - b).max()), 5),
            "mean_abs_prob_diff": round(float(np.abs(a - b).mean()), 6),
            "spearman_per_class_min": round(float(finite.min()), 4) if finite.size else None,
            "spearman_per_class_median": round(float(np.median(finite)), 4) if finite.size else None,
            "classes_with_constant_scores": int(rho.size - finite.size)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=None, help="a finished demo run (default: train one in --work)")
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-int8"))
    p.add_argument("--calibration-seconds", type=float, default=120.0)
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "int8_trained.json")
    p.add_argument("--fast", action="store_true", help="the demo's fast setting (2 epochs: a smoke test, not a result)")
    p.add_argument("--note", default="")
    args = p.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    demo = args.demo
    train_s = None
    if demo is None:
        from nfaudio.demo import run_demo

        demo = args.work / "demo"
        if not (demo / "summary.json").exists():
            t0 = time.perf_counter()
            run_demo(demo, seed=0, fast=args.fast)
            train_s = round(time.perf_counter() - t0, 1)
    summary = json.loads((demo / "summary.json").read_text())
    data = Path(summary["outputs"]["data"])
    cv = demo / "cv"
    truth = pd.read_csv(data / "test_soundscapes_labels.csv")
    for cache in cv.glob("fold*/.nfaudio-export"):  # int8 built in this run, from this calibration
        shutil.rmtree(cache)

    cases = [("torch fp32", "torch", "fp32"), ("openvino fp32", "openvino", "fp32"),
             ("openvino int8", "openvino", "int8")]
    int8 = Int8Options(calibration=(str(data / "train_audio"),), seconds=args.calibration_seconds,
                       tolerance=args.tolerance, warn=True)
    runs, subs = [], {}
    for name, backend, precision in cases:
        t0 = time.perf_counter()
        predictor = Predictor.from_checkpoint(cv, backend=backend, precision=precision, batch_size=32,
                                              int8=int8 if precision == "int8" else None)
        load_s = time.perf_counter() - t0
        out = args.work / "out" / name.replace(" ", "-")
        run = run_prediction(predictor, [data / "test_soundscapes"], out, formats=("submission",), overwrite=True,
                             progress=False)
        sub = pd.read_csv(out / "submission.csv")
        subs[name] = sub
        runs.append({"case": name, "load_s": round(load_s, 2), "xrt_scoring": round(run.realtime_factor, 1),
                     "threads": predictor.threads, "macro_auc": round(score_submission(truth, sub, "macro_auc"), 4),
                     "padded_cmap": round(score_submission(truth, sub, "padded_cmap"), 4)})
        print(runs[-1], file=sys.stderr)
    for r in runs[1:]:
        r["vs_torch_fp32"] = compare_scores(subs[r["case"]], subs["torch fp32"])
    guard = int8_guard(cv, args.tolerance)

    result = {
        "benchmark": "int8 (NNCF post-training quantization, OpenVINO) on a trained ensemble: scores and metric",
        "started_utc": started, "command": " ".join([Path(sys.executable).name, *sys.argv]), "note": args.note,
        "machine": machine.machine_info("torch", "openvino", "nncf"),
        "model": {"what": "the built-in demo's 2-fold nfaudio_small SED ensemble (nfaudio.demo), trained",
                  "demo_train_seconds": train_s, "demo_summary": {k: summary[k] for k in ("macro_auc", "padded_cmap",
                                                                                           "n_windows", "n_classes")}},
        "data": {"scored": "the demo's labelled test soundscapes", "windows": int(len(truth)),
                 "calibration": f"the demo's training clips (train_audio), {args.calibration_seconds:g} s"},
        "tolerance": args.tolerance, "runs": runs, "int8_guard": guard,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
