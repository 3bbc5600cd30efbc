"""Training and prediction speed beside competing CPU-bound processes, before and after the thread policy.

On a small CPU, torch's default intra-op threads (one per core) plus DataLoader / decode worker processes
oversubscribe the cores, and a busy neighbour then costs far more than its fair share. This benchmark runs the
real CLI as subprocesses, quiet and beside 1 and 2 busy processes (``python -c 'while True: pass'``, killed by
pid in a ``finally``), for two jobs:

  * train: the demo recipe (``nfaudio.demo.demo_config``) on the demo's synthetic data, one epoch of
    ``--steps`` batches of 16 with ``data.num_workers=2``; throughput is ``clips_per_s`` from ``history.csv``;
  * predict: ``nfaudio predict --workers 1`` on the 5 synthetic 60 s soundscapes with a checkpoint from a
    warm-up training run; wall clock of the whole command and the real-time factor it prints.

Each job runs in two settings: ``before`` pins the threads to torch's old default (``torch.get_num_threads()``
in a fresh process: the core count) with ``--set train.threads=N`` / ``--threads N``; ``after`` passes no
thread setting (the library's policy decides). Runs are interleaved (quiet, 1, 2 competitors per repeat, the
setting order alternating) so drifting background load spreads evenly. Reported per (job, setting,
competitors): the median of ``--repeats`` runs and the slowdown vs quiet for the same setting, next to the fair
share ``(cores + competitors) / cores`` (1.5x and 2x on 2 cores). Writes ``benchmarks/results/contention.json``.

Usage:
    python benchmarks/contention.py [--steps 30] [--repeats 3] [--competitors 0,1,2] [--jobs train,predict]
        [--work /tmp/nfaudio-contention] [--note "quiet machine"]
Smoke test:
    python benchmarks/contention.py --steps 3 --repeats 1 --competitors 0 --train-threads-flag off \\
        --out /tmp/contention-smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import machine
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "contention.json"
REALTIME = re.compile(r"in ([\d.]+) s \(([\d.]+)x real time\)")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")
BATCH_SIZE = 16


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def child_env() -> dict[str, str]:
    """The environment of every subprocess: this checkout first on the path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def fresh_torch_threads() -> int:
    """``torch.get_num_threads()`` in a fresh Python process (torch's own default, before any policy)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], check=True,
                         capture_output=True, text=True, env=child_env(), cwd=ROOT)
    return int(out.stdout.strip())


def has_train_threads_key() -> bool:
    """Whether the recipe accepts ``train.threads`` (the same override path the CLI uses)."""
    from nfaudio.config import ConfigError, load_config

    try:
        load_config(None, ["train.threads=1"])
    except ConfigError:
        return False
    return True


def machine_info(before_threads: int) -> dict:
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    return {**machine.machine_info("torch", "onnxruntime", "openvino"), "torch_threads_fresh_process": before_threads,
            "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
            "code_version": git.stdout.strip() or None}


@contextlib.contextmanager
def competitors(n: int, settle_s: float = 0.5) -> Iterator[list[int]]:
    """Start ``n`` busy single-threaded Python processes for the block; always kill them (by pid) afterwards."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if n:
            time.sleep(settle_s)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def run_command(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess | None, float, str | None]:
    """Run ``cmd``; returns (process, wall seconds, error line or None)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0, f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
        return proc, wall, lines[-1]
    return proc, wall, None


def train_cmd(recipe: Path, out: Path, steps: int, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "nfaudio", "--quiet", "train", "--recipe", str(recipe), "--out", str(out),
           "--set", "train.epochs=1", "--set", f"train.max_steps_per_epoch={steps}",
           "--set", "data.num_workers=2", "--set", "train.device=cpu"]
    return cmd + (["--set", f"train.threads={threads}"] if threads else [])


def predict_cmd(model: Path, audio: Path, out: Path, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "nfaudio", "--quiet", "predict", str(model), str(audio), "--out", str(out),
           "--workers", "1", "--no-progress", "--device", "cpu"]
    return cmd + (["--threads", str(threads)] if threads else [])


def run_train(recipe: Path, out: Path, steps: int, threads: int | None, timeout: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = train_cmd(recipe, out, steps, threads)
    proc, wall, error = run_command(cmd, timeout)
    rec = {"command": " ".join(["nfaudio", *cmd[3:]]), "wall_s": round(wall, 2)}
    if error:
        return {**rec, "error": error}
    history = pd.read_csv(out / "history.csv")
    return {**rec, "clips_per_s": round(float(history["clips_per_s"].iloc[-1]), 2)}


def run_predict(model: Path, audio: Path, audio_s: float, out: Path, threads: int | None, timeout: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = predict_cmd(model, audio, out, threads)
    proc, wall, error = run_command(cmd, timeout)
    rec = {"command": " ".join(["nfaudio", *cmd[3:]]), "wall_s": round(wall, 2)}
    if error:
        return {**rec, "error": error}
    match = REALTIME.search(proc.stdout)
    if match is None:
        return {**rec, "error": f"no real-time factor in the output: {proc.stdout.strip()[-200:]!r}"}
    return {**rec, "scoring_s": float(match.group(1)), "xrt_scoring": float(match.group(2)),
            "xrt_wall": round(audio_s / wall, 2)}


def prepare(work: Path, steps: int, timeout: float) -> tuple[Path, Path, float, Path]:
    """Synthetic data, the recipe, and a warm-up training run whose checkpoint the predict job uses."""
    import soundfile as sf

    from nfaudio.config import dump_config
    from nfaudio.demo import demo_config
    from nfaudio.synth import SynthConfig, generate_dataset

    data = generate_dataset(work / "data", SynthConfig(seed=0, clips_per_species=30, n_soundscapes=5,
                                                       clip_seconds=(2.0, 6.0)))
    recipe = work / "recipe.yaml"
    dump_config(demo_config(data.root), recipe)
    audio = data.root / "test_soundscapes"
    audio_s = sum(sf.info(str(p)).duration for p in sorted(audio.iterdir()) if p.is_file())
    print("warm-up: training the model the predict job scores ...", file=sys.stderr)
    warm = run_train(recipe, work / "warmup-train", steps, None, timeout)
    if "error" in warm:
        raise SystemExit(f"warm-up training failed: {warm['error']}\n  {warm['command']}")
    model = work / "warmup-train" / "best.pt"
    return recipe, audio, audio_s, model


def summarize(runs: list[dict], counts: list[int], cores: int, tolerance: float) -> list[dict]:
    """Median per (job, setting, competitors) and the slowdown vs quiet for the same job and setting."""
    metric = {"train": ("clips_per_s", True), "predict": ("wall_s", False)}  # (value, higher is better)
    rows = []
    for job in dict.fromkeys(r["job"] for r in runs):
        key, higher = metric[job]
        for setting in dict.fromkeys(r["setting"] for r in runs if r["job"] == job):
            medians = {}
            for n in counts:
                ok = [r for r in runs if (r["job"], r["setting"], r["competitors"]) == (job, setting, n)
                      and "error" not in r]
                medians[n] = statistics.median(r[key] for r in ok) if ok else None
                row = {"job": job, "setting": setting, "competitors": n, "runs": len(ok), f"median_{key}": medians[n]}
                if job == "predict" and ok:
                    row["median_xrt_scoring"] = statistics.median(r["xrt_scoring"] for r in ok)
                    row["median_xrt_wall"] = statistics.median(r["xrt_wall"] for r in ok)
                quiet = medians.get(0)
                if n and quiet and medians[n]:
                    slowdown = quiet / medians[n] if higher else medians[n] / quiet
                    fair = (cores + n) / cores
                    row.update(slowdown_vs_quiet=round(slowdown, 2), fair_slowdown=round(fair, 2),
                               within_fair_share=slowdown <= fair * (1 + tolerance))
                rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'job':>8} {'setting':>7} {'comp':>4} {'runs':>4} {'median':>12} {'slowdown':>8} {'fair':>5} ok")
    for r in rows:
        key = "median_clips_per_s" if r["job"] == "train" else "median_wall_s"
        unit = "clips/s" if r["job"] == "train" else "s"
        value = f"{r[key]:.1f} {unit}" if r[key] is not None else "failed"
        slow = f"{r['slowdown_vs_quiet']:.2f}x" if "slowdown_vs_quiet" in r else "-"
        fair = f"{r['fair_slowdown']:.1f}x" if "fair_slowdown" in r else "-"
        ok = {True: "yes", False: "NO"}.get(r.get("within_fair_share"), "-")
        print(f"{r['job']:>8} {r['setting']:>7} {r['competitors']:>4} {r['runs']:>4} {value:>12} {slow:>8} "
              f"{fair:>5} {ok}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="training steps (batches of 16) per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per (job, setting, competitors); medians reported")
    p.add_argument("--competitors", default="0,1,2", help="comma-separated numbers of busy processes (0 = quiet)")
    p.add_argument("--jobs", default="train,predict", help="comma-separated: train, predict")
    p.add_argument("--settings", default="before,after", help="comma-separated: before, after")
    p.add_argument("--before-threads", type=int, default=None,
                   help="threads pinned in the 'before' setting (default: torch's default in a fresh process)")
    p.add_argument("--train-threads-flag", choices=("auto", "on", "off"), default="auto",
                   help="pass --set train.threads=N to training: auto = when the recipe has that key; "
                        "off = never (the 'before' training runs are then not pinned)")
    p.add_argument("--tolerance", type=float, default=0.1, help="slack on the fair share for 'within_fair_share'")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is killed")
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-contention"))
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'quiet machine')")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    counts = sorted({int(x) for x in args.competitors.split(",") if x.strip()})
    jobs = [x.strip() for x in args.jobs.split(",") if x.strip()]
    settings = [x.strip() for x in args.settings.split(",") if x.strip()]
    if not set(jobs) <= {"train", "predict"} or not set(settings) <= {"before", "after"} or min(counts) < 0:
        p.error("--jobs takes train,predict; --settings takes before,after; --competitors takes counts >= 0")

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    before_threads = args.before_threads or fresh_torch_threads()
    key_exists = has_train_threads_key()
    train_flag = {"on": True, "off": False, "auto": key_exists}[args.train_threads_flag]
    if "train" in jobs and "before" in settings and not train_flag:
        print("note: training runs get no train.threads (recipe key "
              f"{'present' if key_exists else 'missing'}); 'before' training is not pinned", file=sys.stderr)
    args.work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work / "runs", ignore_errors=True)
    recipe, audio, audio_s, model = prepare(args.work, args.steps, args.timeout)

    runs = []
    for rep in range(args.repeats):
        order = settings if rep % 2 == 0 else settings[::-1]
        for n in counts:
            with competitors(n) as pids:
                for job in jobs:
                    for setting in order:
                        threads = before_threads if setting == "before" else None
                        out = args.work / "runs" / f"{job}-{setting}-c{n}-r{rep}"
                        print(f"repeat {rep}, {n} competitor(s): {job} {setting} ...", file=sys.stderr)
                        load0 = os.getloadavg()[0]
                        if job == "train":
                            res = run_train(recipe, out, args.steps, threads if train_flag else None, args.timeout)
                        else:
                            res = run_predict(model, audio, audio_s, out, threads, args.timeout)
                        if "error" in res:
                            print(f"  failed: {res['error']}", file=sys.stderr)
                        runs.append({"job": job, "setting": setting, "competitors": n, "repeat": rep,
                                     "competitor_pids": pids, "loadavg_1min_before": round(load0, 2), **res})
    summary = summarize(runs, counts, usable_cpus(), args.tolerance)
    result = {
        "benchmark": "training and prediction beside competing CPU-bound processes, before/after thread policy",
        "started_utc": started, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**machine_info(before_threads), "loadavg_at_start": [round(x, 2) for x in load_start],
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "note": args.note,
        "settings": {"before": {"threads": before_threads, "train_threads_flag": train_flag,
                                "train_threads_key_present": key_exists},
                     "after": {"threads": "library default (no flag)"}, "repeats": args.repeats,
                     "competitors": counts, "competitor": "python -c 'while True: pass'",
                     "train": {"steps": args.steps, "batch_size": BATCH_SIZE, "num_workers": 2,
                               "recipe": "nfaudio.demo.demo_config", "throughput": "history.csv clips_per_s"},
                     "predict": {"workers": 1, "audio_seconds": round(audio_s, 1), "files": 5,
                                 "model": "warm-up training run's best.pt"},
                     "fair_slowdown": "(usable cpus + competitors) / usable cpus", "tolerance": args.tolerance},
        "summary": summary, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(summary)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
