"""Scale of one ``nfaudio predict`` run: many short files and many long ones, memory, journal cost, kill -9 resume.

Makes the data on the fly: ``--short`` WAV files of 1-5 s (alternately 8 and 16 kHz, so half are resampled) and
``--long`` WAV files of ``--long-seconds`` at 16 kHz. To keep the disk small, only ``--long-distinct`` long files
are written (in 60 s blocks) and the others are hard links to them under distinct names: the journal keys files
by ``Path.resolve()``, which keeps a hard link's own path (a symlink would resolve to its target and collapse
onto one key, so symlinks would not be a valid test). Saves a randomly initialised ``nfaudio_tiny`` with the SED
head (10 classes, 5 s windows at 16 kHz, 32 mels).

For each set it runs ``nfaudio predict`` as a subprocess and, while it runs, samples the RSS of the command and
its decode workers (psutil) and the time each journal line appears, giving the time per file over the first and
the last 10% of the files. Then the same command in a second folder is killed with SIGKILL at ``--kills`` points
(random fractions of the files, the last one while the combined outputs are being written when that can be
caught) and rerun until it completes; every output file is compared byte for byte with the uninterrupted run.
Writes ``benchmarks/results/scale.json``.

Usage:
    python benchmarks/scale.py [--short 10000] [--long 200] [--long-seconds 3600] [--kills 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import machine
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
N_CLASSES = 10
BLOCK_S = 60
FORMATS = "submission,table"
SUMMARY = re.compile(r"in ([\d.]+) s \(([\d.]+)x real time\)")


def machine_info() -> dict:
    return machine.machine_info("torch", "numpy", "psutil")


def _signal(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    y = 0.05 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t) * (t % 1.0 < 0.3)
    return y.astype(np.float32)


def make_short(folder: Path, n: int, seed: int = 0) -> float:
    """``n`` WAV files of 1-5 s, alternately at 8 and 16 kHz; returns the seconds of audio."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = 0.0
    for i in range(n):
        sr = 8000 if i % 2 else SR
        seconds = float(rng.uniform(1.0, 5.0))
        total += int(seconds * sr) / sr
        path = folder / f"d{i // 1000:02d}" / f"short_{i:05d}.wav"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _signal(rng, int(seconds * sr), sr), sr, subtype="PCM_16")
    return total


def make_long(folder: Path, n: int, seconds: float, distinct: int, seed: int = 1) -> float:
    """``distinct`` WAV files of ``seconds`` at 16 kHz written in blocks, and hard links to reach ``n`` names."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    src = folder.parent / f"{folder.name}-distinct"
    src.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    n_samples = int(seconds * SR)
    for k in range(min(distinct, n)):
        path = src / f"distinct_{k}.wav"
        if not path.exists():
            tmp = path.with_suffix(".tmp.wav")
            with sf.SoundFile(tmp, "w", SR, 1, subtype="PCM_16") as fh:
                for b in range(0, n_samples, BLOCK_S * SR):
                    fh.write(_signal(rng, min(BLOCK_S * SR, n_samples - b), SR))
            tmp.rename(path)
    for i in range(n):
        link = folder / f"long_{i:03d}.wav"
        if not link.exists():
            os.link(src / f"distinct_{i % distinct}.wav", link)
    return n * n_samples / SR


def make_model(path: Path) -> Path:
    import torch

    from nfaudio.models import create_model, save_model

    if not path.exists():
        torch.manual_seed(0)
        model = create_model("nfaudio_tiny", N_CLASSES, head="sed", frontend=dict(
            sample_rate=SR, n_fft=512, hop_length=320, n_mels=32, fmin=20.0, fmax=8000.0))
        save_model(model, path, classes=[f"class_{i}" for i in range(N_CLASSES)], duration=5.0,
                   activation="sigmoid")
    return path


class _Lines:
    """Counts the lines of a growing file (the journal), reading only what was appended."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.n = path, 0, 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < self.offset:  # rewritten on a resume
                    self.offset = self.n = 0
                fh.seek(self.offset)
                new = fh.read()
        except FileNotFoundError:
            return 0
        self.offset += len(new)
        self.n += new.count(b"\n")
        return self.n


def _rss(proc) -> tuple[float, float]:
    """(RSS of the command, RSS of the command plus its children) in MiB."""
    import psutil

    try:
        own = proc.memory_info().rss
        kids = 0
        for c in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                kids += c.memory_info().rss
        return own / 2**20, (own + kids) / 2**20
    except psutil.Error:
        return float("nan"), float("nan")


def run(cmd: list[str], out: Path, n_files: int, kill_at: int | None = None, kill_in_write: bool = False) -> dict:
    """Run ``cmd``; sample memory and journal lines; SIGKILL it once ``kill_at`` files are journaled (or, with
    ``kill_in_write``, once a combined output is being written)."""
    import psutil

    lines = _Lines(out / ".nfaudio" / "journal.jsonl")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ps = psutil.Process(proc.pid)
    times: list[float] = []  # seconds from start at which each journal line was seen
    rss: list[tuple[float, int, float, float]] = []  # (t, files done, own MiB, with children MiB)
    n0 = None
    killed = None
    last_rss = -1.0
    while proc.poll() is None:
        n = lines.poll()
        now = time.perf_counter() - t0
        if n0 is None and n:
            n0 = n  # lines already there from an earlier run (a resume rewrites them at start)
        times.extend([now] * max(0, n - len(times)))
        if now - last_rss >= 0.25:
            rss.append((round(now, 3), n, *map(lambda x: round(x, 1), _rss(ps))))
            last_rss = now
        if kill_at is not None and n >= kill_at and not kill_in_write:
            killed = {"after_s": round(now, 2), "journaled": n, "point": "scoring"}
        elif kill_in_write and n >= n_files and any(out.glob("*.nfaudio-tmp")):
            killed = {"after_s": round(now, 2), "journaled": n, "point": "writing the combined outputs",
                      "tmp_files": sorted(p.name for p in out.glob("*.nfaudio-tmp"))}
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    times.extend([wall] * max(0, lines.poll() - len(times)))
    res = {"wall_s": round(wall, 2), "returncode": proc.returncode, "journaled": lines.n, "killed": killed,
           "times": times, "rss": rss, "summary": stdout.strip()}
    if proc.returncode not in (0, -signal.SIGKILL):
        res["stderr"] = stderr.strip()[-2000:]
    return res


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".nfaudio" not in p.parts}


def measure(name: str, audio: Path, n_files: int, audio_s: float, model: Path, work: Path, args) -> dict:
    base = [sys.executable, "-m", "nfaudio", "-q", "predict", str(model), str(audio), "--format", FORMATS,
            "--no-progress", "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    ref_out, killed_out = work / f"out-{name}", work / f"out-{name}-killed"
    print(f"{name}: uninterrupted run of {n_files} files ...", file=sys.stderr)
    ref = run([*base, "--out", str(ref_out), "--overwrite"], ref_out, n_files)
    if ref["returncode"] != 0:
        return {"error": ref.get("stderr", "failed")}
    times, rss = ref.pop("times"), ref.pop("rss")
    k = max(1, n_files // 10)
    first = (times[k - 1] - times[0]) / max(k - 1, 1) if k > 1 else float("nan")
    last = (times[-1] - times[-k]) / max(k - 1, 1) if k > 1 else float("nan")
    early = [r for r in rss if r[1] <= max(n_files // 10, 1)]  # from the start until 10% of the files are done
    late = [r for r in rss if r[1] >= n_files - n_files // 10]  # the last 10% and the combined outputs
    summary = SUMMARY.search(ref["summary"])
    result = {
        "files": n_files, "audio_hours": round(audio_s / 3600, 2), "command": " ".join(["nfaudio", *base[3:],
                                                                                          "--out", "OUT"]),
        "wall_s": ref["wall_s"], "xrt_wall": round(audio_s / ref["wall_s"], 1),
        "xrt_scoring": float(summary.group(2)) if summary else None, "summary": ref["summary"],
        "time_per_file_ms_first_10pct": round(1000 * first, 2), "time_per_file_ms_last_10pct": round(1000 * last, 2),
        "last_vs_first": round(last / first, 3) if first > 0 else None,
        "finalize_s": round(ref["wall_s"] - times[-1], 2),
        "rss_mib": {"command_first_10pct_max": max((r[2] for r in early), default=None),
                    "command_last_10pct_max": max((r[2] for r in late), default=None),
                    "with_workers_first_10pct_max": max((r[3] for r in early), default=None),
                    "with_workers_last_10pct_max": max((r[3] for r in late), default=None),
                    "command_peak": max((r[2] for r in rss), default=None),
                    "with_workers_peak": max((r[3] for r in rss), default=None),
                    "samples": len(rss)},
        "rss_trace_every_10th": rss[::10],
    }
    rng = np.random.default_rng(args.seed)
    fractions = sorted(rng.uniform(0.1, 0.9, max(args.kills - 1, 0)).tolist()) if args.kills else []
    kills = []
    if args.kills:
        print(f"{name}: kill -9 at {len(fractions)} fractions + while writing the outputs ...", file=sys.stderr)
        cmd = [*base, "--out", str(killed_out)]
        import shutil

        shutil.rmtree(killed_out, ignore_errors=True)
        for f in fractions:
            r = run(cmd, killed_out, n_files, kill_at=max(1, int(f * n_files)))
            kills.append({"fraction": round(f, 3), **(r["killed"] or {"missed": "the run ended first"}),
                          "wall_s": r["wall_s"]})
        r = run(cmd, killed_out, n_files, kill_in_write=True)
        kills.append({"fraction": "outputs", **(r["killed"] or {"missed": "the outputs were written too fast to "
                                                                          "catch; the run completed"}),
                      "wall_s": r["wall_s"]})
        final = run(cmd, killed_out, n_files)
        a, b = _snapshot(ref_out), _snapshot(killed_out)
        diff = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
        result["kill_resume"] = {"kills": kills, "final_run_rc": final["returncode"], "final_summary":
                                 final["summary"], "files_compared": sorted(a), "bytes_compared": sum(map(len,
                                 a.values())), "different": diff, "byte_identical": not diff and bool(a)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", type=int, default=10000, help="short files (1-5 s)")
    p.add_argument("--long", type=int, default=200, help="long files")
    p.add_argument("--long-seconds", type=float, default=3600.0)
    p.add_argument("--long-distinct", type=int, default=4, help="distinct long files; the rest are hard links")
    p.add_argument("--kills", type=int, default=3, help="kill -9 points per set (0: no resume test)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="decode processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/nfaudio-bench-scale"))
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    model = make_model(args.work / "nfaudio_tiny_sed.pt")
    sets = {}
    if args.short:
        tag = f"short{args.short}"
        audio_s = make_short(args.work / tag, args.short)
        sets["short"] = measure("short", args.work / tag, args.short, audio_s, model, args.work, args)
    if args.long:
        tag = f"long{args.long}x{args.long_seconds:g}"
        audio_s = make_long(args.work / tag, args.long, args.long_seconds, args.long_distinct)
        sets["long"] = measure("long", args.work / tag, args.long, audio_s, model, args.work, args)
    result = {
        "benchmark": "nfaudio predict at scale: memory, journal cost per file, kill -9 resume",
        "started_utc": started, "command": " ".join(sys.argv),
        "machine": {**machine_info(), "loadavg_at_start": [round(x, 2) for x in load_start],
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "note": args.note,
        "data": {"short": {"files": args.short, "seconds": "uniform 1-5", "format": "wav pcm16",
                           "sample_rates": "8000 and 16000 alternately"},
                 "long": {"files": args.long, "seconds_each": args.long_seconds, "format": "wav pcm16",
                          "sample_rate": SR, "distinct": min(args.long_distinct, args.long),
                          "others": "hard links under distinct names (journal keys are resolved paths: distinct)"}},
        "model": {"name": "nfaudio_tiny", "head": "sed", "classes": N_CLASSES, "window_s": 5.0, "sample_rate": SR,
                  "weights": "random init", "frontend": "n_fft 512, hop 320, 32 mels"},
        "settings": {"formats": FORMATS, "batch_size": args.batch_size, "decode_workers": args.workers,
                     "kills": args.kills, "seed": args.seed},
        "sets": sets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in sets.items():
        if "error" in s:
            print(f"{name}: {s['error']}")
            continue
        kr = s.get("kill_resume", {})
        print(f"{name}: {s['files']} files, {s['audio_hours']} h: {s['xrt_wall']}x real time (wall), per file "
              f"{s['time_per_file_ms_first_10pct']} ms first 10% vs {s['time_per_file_ms_last_10pct']} ms last 10%, "
              f"RSS {s['rss_mib']['command_first_10pct_max']} -> {s['rss_mib']['command_last_10pct_max']} MiB; "
              f"kill -9 resume byte-identical: {kr.get('byte_identical')}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
