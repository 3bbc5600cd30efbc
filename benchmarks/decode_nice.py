"""The decode worker's priority during prediction, side by side: worker at nice 0, 10 and 19 (the default,
``nfaudio.decode.WORKER_NICE``; 10 was the default when ``benchmarks/results/decode_nice.json`` was measured, hence
its label there), and decoding inline, each a fresh ``nfaudio predict``-like process (``predict_whole.run``:
OpenVINO, warm export cache, every core for the model) on one long recording; repeated in rounds so that the
cases interleave. Reuses ``benchmarks/predict_whole.py``'s recording and ensembles (made when missing).

Usage:
    flock /tmp/nfaudio-heavy.lock python benchmarks/decode_nice.py [--repeats 3] [--minutes 10] [--eca]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import machine
import predict_whole as pw

from nfaudio.runtime import usable_cores

CASES = [("worker nice 0", 1, 0), ("worker nice 10", 1, 10), ("worker nice 19", 1, 19), ("inline", 0, 0)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--eca", action="store_true", help="also the 5-fold eca_nfnet_l0 ensemble (about 3 min a round)")
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-bench-whole"))
    p.add_argument("--out", type=Path, default=pw.ROOT / "benchmarks" / "results" / "decode_nice.json")
    p.add_argument("--note", default="")
    args = p.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    audio = pw.make_audio(args.work / "audio" / "long.flac", args.minutes)
    audio_s = args.minutes * 60
    ensembles = {"demo_2fold_nfaudio_small": pw.make_cv(args.work / "demo2", "nfaudio_small", 2, pw.DEMO_FRONTEND),
                 "5fold_nfaudio_tiny": pw.make_cv(args.work / "tiny5", "nfaudio_tiny", 5, pw.DEMO_FRONTEND)}
    if args.eca:
        ensembles["5fold_eca_nfnet_l0"] = pw.make_cv(args.work / "eca5", "eca_nfnet_l0", 5, pw.ECA_FRONTEND,
                                                     classes=182, trained_like=True)
    cores = usable_cores()  # every core for the model, as prediction's default gives it

    def predict(ens: str, model: Path, out: str, workers: int, nice: int) -> dict:
        """One fresh process, as predict_whole's runs (OpenVINO, shared frontend, fp32)."""
        return pw.run(model, audio, args.work / out / ens, "openvino", True, cores, audio_s, workers=workers,
                      nice=nice)

    for ens, model in ensembles.items():  # fill the export cache: every case below is warm
        warm = predict(ens, model, "warm", 1, 0)
        if "error" in warm:
            raise SystemExit(f"{ens}: {warm['error']}")
    runs = []
    for rep in range(args.repeats):
        for ens, model in ensembles.items():
            for case, workers, nice in CASES:
                row = {"ensemble": ens, "case": case, "round": rep,
                       **predict(ens, model, f"nice/{case}", workers, nice)}
                print(json.dumps(row), file=sys.stderr, flush=True)
                runs.append(row)
    failed = [r for r in runs if "error" in r]
    summary = {}
    for ens in ensembles:
        base = {r["round"]: r["xrt_wall"] for r in runs
                if r["ensemble"] == ens and r["case"] == CASES[0][0] and "error" not in r}
        summary[ens] = {}
        for case, _, _ in CASES:
            mine = [r for r in runs if r["ensemble"] == ens and r["case"] == case and "error" not in r]
            summary[ens][case] = {
                "median_xrt_wall": statistics.median(r["xrt_wall"] for r in mine) if mine else None,
                "ratio_to_nice_0_per_round": [round(r["xrt_wall"] / base[r["round"]], 3) for r in mine
                                              if r["round"] in base]}
    result = {"benchmark": "decode worker priority during prediction (OpenVINO warm, every core for the model)",
              "started_utc": started, "command": " ".join(["python", *sys.argv]), "note": args.note,
              "machine": machine.machine_info("torch", "openvino"),
              "data": {"files": 1, "audio_seconds": audio_s, "format": "flac"}, "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
