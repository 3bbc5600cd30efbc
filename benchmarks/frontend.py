"""Benchmark the log-mel frontend and audio decoding, side by side in one run.

Compares, per 5 s clip at 32 kHz (n_fft 2048, hop 512, 128 Slaney mels, 20-16000 Hz, top_db 80):
  * ``nfaudio.frontend.LogMel`` (stft="fft" and stft="conv"),
  * librosa ``melspectrogram`` + ``power_to_db`` (one call per clip, and one multichannel call),
  * torchaudio ``MelSpectrogram(norm="slaney", mel_scale="slaney")`` + ``AmplitudeToDB``,
for a single clip and a batch, then the time to decode and resample 60 s of 44.1 kHz Ogg Vorbis
with ``nfaudio.audio.load(path, sr=32000)``. Methods are timed round-robin (warm-up first, median of
repeats) with torch's default thread count; the batch is timed once more with one torch thread
(labelled ``_torch_threads_1``). Results go to ``benchmarks/results/frontend.json``.

Run: ``.venv/bin/python benchmarks/frontend.py [--repeats 7] [--batch 64]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import librosa
import machine
import numpy as np
import soundfile as sf
import torch
import torchaudio

from nfaudio import audio
from nfaudio.frontend import LogMel

SR, SECONDS = 32000, 5.0
PARAMS = {"n_fft": 2048, "hop_length": 512, "n_mels": 128, "fmin": 20.0, "fmax": 16000.0, "top_db": 80.0}
RESULTS = Path(__file__).resolve().parent / "results" / "frontend.json"


def _clips(n: int, seed: int = 0) -> np.ndarray:
    """Noise plus a few chirps, float32 (n, 5 s)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * SECONDS)) / SR
    chirps = np.sin(2 * np.pi * (1000 + 600 * t)[None] * t[None] * rng.uniform(0.5, 2.0, (n, 1)))
    return (0.05 * rng.standard_normal((n, t.size)) + 0.3 * chirps).astype(np.float32)


def _methods(batch: np.ndarray) -> dict[str, Callable[[], object]]:
    p = PARAMS
    fe_fft, fe_conv = LogMel(SR, stft="fft"), LogMel(SR, stft="conv")
    ta_mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SR, n_fft=p["n_fft"], hop_length=p["hop_length"], f_min=p["fmin"], f_max=p["fmax"],
        n_mels=p["n_mels"], power=2.0, center=True, pad_mode="constant", norm="slaney", mel_scale="slaney")
    ta_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=p["top_db"])
    x = torch.from_numpy(batch)
    lr = {"sr": SR, "n_fft": p["n_fft"], "hop_length": p["hop_length"], "n_mels": p["n_mels"],
          "fmin": p["fmin"], "fmax": p["fmax"], "htk": False, "norm": "slaney"}

    def librosa_loop() -> list[np.ndarray]:
        return [librosa.power_to_db(librosa.feature.melspectrogram(y=y, **lr), top_db=p["top_db"]) for y in batch]

    def librosa_multichannel() -> np.ndarray:  # one call on (B, T); note power_to_db clamps batch-wide here
        return librosa.power_to_db(librosa.feature.melspectrogram(y=batch, **lr), top_db=p["top_db"])

    def torch_fn(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return fn(x)
        return run

    return {
        "nfaudio_logmel_fft": torch_fn(fe_fft),
        "nfaudio_logmel_conv": torch_fn(fe_conv),
        "librosa_per_clip_loop": librosa_loop,
        "librosa_multichannel_call": librosa_multichannel,
        "torchaudio_melspectrogram_db": torch_fn(lambda w: ta_db(ta_mel(w))),
    }


def _time_round_robin(methods: dict[str, Callable[[], object]], repeats: int, n_clips: int) -> dict[str, dict]:
    for fn in methods.values():  # warm-up (librosa caches filterbanks, torch allocates)
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: {"ms_per_clip_median": 1e3 * statistics.median(ts) / n_clips,
                   "ms_per_clip_min": 1e3 * min(ts) / n_clips, "repeats": repeats}
            for name, ts in times.items()}


def _agreement() -> dict[str, float]:
    """Max |dB| difference of LogMel (float32) and torchaudio vs librosa on one clip (sanity check)."""
    y = _clips(1, seed=1)
    p = PARAMS
    ref = librosa.power_to_db(librosa.feature.melspectrogram(
        y=y[0].astype(np.float64), sr=SR, n_fft=p["n_fft"], hop_length=p["hop_length"], n_mels=p["n_mels"],
        fmin=p["fmin"], fmax=p["fmax"], htk=False, norm="slaney"), top_db=p["top_db"])
    with torch.inference_mode():
        ours = LogMel(SR)(torch.from_numpy(y))[0, 0].double().numpy()
    return {"logmel_vs_librosa_max_abs_db": float(np.abs(ours - ref).max())}


def _decode(repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long_44k.ogg"
        t = np.arange(60 * 44100) / 44100
        y = 0.3 * np.sin(2 * np.pi * 1500 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
        # write in 1 s blocks: one large sf.write of Ogg Vorbis segfaults in some libsndfile builds
        with sf.SoundFile(path, "w", 44100, 1, format="OGG", subtype="VORBIS") as f:
            for start in range(0, y.size, 44100):
                f.write(y[start : start + 44100].astype(np.float32))
        out = {}
        for name, sr in (("decode_only_s_per_60s", None), ("decode_resample_32k_s_per_60s", 32000)):
            audio.load(path, sr=sr)  # warm-up
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                audio.load(path, sr=sr)
                ts.append(time.perf_counter() - t0)
            out[name] = statistics.median(ts)
        out["file_mb"] = path.stat().st_size / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_before = os.getloadavg()
    batch = _clips(args.batch)
    results = {
        "single_clip": _time_round_robin(_methods(batch[:1]), max(args.repeats, 50), 1),
        f"batch_{args.batch}": _time_round_robin(_methods(batch), args.repeats, args.batch),
    }
    # Supplementary: one torch thread (as in a DataLoader worker); robust to other jobs on the CPU.
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    methods = {k: v for k, v in _methods(batch).items() if k != "nfaudio_logmel_conv"}
    results[f"batch_{args.batch}_torch_threads_1"] = _time_round_robin(methods, args.repeats, args.batch)
    torch.set_num_threads(default_threads)
    for res in results.values():
        ours = res["nfaudio_logmel_fft"]["ms_per_clip_median"]
        for other, name in (("librosa_per_clip_loop", "librosa_per_clip_loop"),
                            ("librosa_multichannel_call", "librosa_multichannel"),
                            ("torchaudio_melspectrogram_db", "torchaudio")):
            res[f"speedup_logmel_fft_vs_{name}"] = res[other]["ms_per_clip_median"] / ours
    report = {
        "clip": {"sample_rate": SR, "seconds": SECONDS, **PARAMS},
        "frontend": results,
        "agreement": _agreement(),
        "decode_ogg_vorbis_44k1_60s": _decode(max(3, args.repeats // 2)),
        "machine": {
            **machine.machine_info("torch", "torchaudio", "librosa", "numpy"), "torch_threads": torch.get_num_threads(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "note": "shared machine: other engineers' jobs ran at the same time; see loadavg",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for key, res in results.items():
        print(f"{key}: " + ", ".join(f"{name}={v['ms_per_clip_median']:.2f} ms/clip"
                                     for name, v in res.items() if isinstance(v, dict)))
        print("  speedup of LogMel(fft): " + ", ".join(f"{k.split('_vs_')[1]}={v:.2f}x"
                                                    for k, v in res.items() if k.startswith("speedup")))
    print(f"decode: {report['decode_ogg_vorbis_44k1_60s']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
