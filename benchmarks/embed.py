"""Embedding speed and memory: ``nfaudio embed`` next to ``nfaudio predict`` on the same recordings.

Generates N one-minute OGG files at 32 kHz (benchmarks/predict.py's synthetic soundscapes), saves randomly
initialised nfaudio_small and eca_nfnet_l0 SED models (182 classes, 5 s windows), then for each model runs
``nfaudio predict`` (submission) and ``nfaudio embed`` (store, with and without ``--scores``) on the same files, in
alternating order, and reports x-real-time from each run's summary line, wall clock and each command's peak RSS
(``wait4``). Memory: ``nfaudio embed`` on 1x and Kx the files (symbolic links to the same recordings) with small
shards; the peak RSS should not grow with the archive. Writes ``benchmarks/results/embed.json``.

Usage:
    flock /tmp/nfaudio-heavy.lock python benchmarks/embed.py [--files 20] [--scale 8] [--note "..."]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import N_CLASSES, machine_info, make_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"in ([\d.]+) s \(([\d.]+)x real time\)")


def make_model(path: Path, name: str) -> Path:
    import torch

    from nfaudio.models import create_model, save_model

    if not path.exists():
        torch.manual_seed(0)
        save_model(create_model(name, N_CLASSES, head="sed"), path,
                   classes=[f"species_{i:03d}" for i in range(N_CLASSES)], duration=5.0, activation="sigmoid")
    return path


def run(cmd: list[str]) -> dict:
    """Run ``python -m nfaudio CMD``; wall clock, the summary's scoring seconds and x real time, peak RSS."""
    full = [sys.executable, "-m", "nfaudio", "-q", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        return {"command": "nfaudio " + " ".join(cmd), "error": (err.strip().splitlines() or ["failed"])[-1]}
    m = SUMMARY.search(out)
    return {"command": "nfaudio " + " ".join(cmd), "wall_s": round(wall, 2), "scoring_s": float(m.group(1)),
            "x_real_time": float(m.group(2)), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "summary": out.strip()}


def store_mib(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--scale", type=int, default=8, help="the memory run embeds files x scale recordings")
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-bench-embed"))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--models", default="nfaudio_small,eca_nfnet_l0")
    p.add_argument("--note", default="")
    args = p.parse_args()

    work = args.work
    files = make_data(work / "audio", args.files, args.minutes)
    audio_s = len(files) * args.minutes * 60
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load0 = os.getloadavg()
    common = ["--workers", str(args.workers), "--no-progress"]
    results: dict = {"benchmark": "nfaudio embed vs nfaudio predict, end to end", "started_utc": started,
                     "command": "benchmarks/embed.py " + " ".join(sys.argv[1:]), "note": args.note,
                     "machine": machine_info(), "data": {"files": len(files), "minutes_each": args.minutes,
                                                         "audio_seconds": audio_s, "format": "ogg vorbis 32 kHz"},
                     "models": {}, "memory": {}}
    for name in args.models.split(","):
        model = make_model(work / f"{name}_sed.pt", name)
        runs = {}
        for kind in ("predict", "embed", "embed_scores", "predict", "embed"):  # alternating; best of repeats
            out = work / f"out-{name}-{kind}"
            if kind == "predict":
                cmd = ["predict", str(model), str(work / "audio"), "--out", str(out), "--format", "submission",
                       "--overwrite", *common]
            else:
                cmd = ["embed", str(model), str(work / "audio"), "--out", str(out), "--overwrite", *common]
                cmd += ["--scores"] if kind == "embed_scores" else []
            r = run(cmd)
            print(name, kind, r.get("x_real_time", r.get("error")), r.get("peak_rss_mib"), flush=True)
            if kind != "predict" and "error" not in r:
                r["store_mib"] = store_mib(out)
            best = runs.get(kind)
            if best is None or ("error" not in r and r["scoring_s"] < best.get("scoring_s", float("inf"))):
                runs[kind] = r
        ok = all("error" not in r for r in runs.values())
        results["models"][name] = {"runs": runs, "embed_speed_vs_predict": round(
            runs["predict"]["scoring_s"] / runs["embed"]["scoring_s"], 3) if ok else None}

    # memory: the same command on 1x and scale x the files (symbolic links), small shards
    name = args.models.split(",")[0]
    model = work / f"{name}_sed.pt"
    big = work / f"audio-x{args.scale}"
    big.mkdir(exist_ok=True)
    for k in range(args.scale):
        for f in files:
            link = big / f"{f.stem}_copy{k}{f.suffix}"
            if not link.exists():
                link.symlink_to(f)
    mem = {}
    for label, folder in (("1x", work / "audio"), (f"{args.scale}x", big)):
        out = work / f"out-mem-{label}"
        r = run(["embed", str(model), str(folder), "--out", str(out), "--overwrite", "--shard-rows", "256",
                 "--scores", *common])
        if "error" not in r:
            r["store_mib"] = store_mib(out)
            r["audio_hours"] = round(len(list(folder.iterdir())) * args.minutes / 60, 2)
        print("memory", label, r.get("peak_rss_mib"), r.get("error"), flush=True)
        mem[label] = r
    results["memory"] = {"model": name, "shard_rows": 256, "runs": mem}
    results["loadavg_at_start"], results["loadavg_at_end"] = load0, os.getloadavg()
    dest = ROOT / "benchmarks" / "results" / "embed.json"
    dest.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
