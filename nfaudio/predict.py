"""Sliding-window prediction over long recordings.

Each file is streamed in blocks (:func:`nfaudio.audio.stream_windows`), cut into windows of the
model's training length, scored in batches, and returned as a DataFrame indexed by
``(file, start_s, end_s)`` with one probability column per class (OpenSoundscape's convention).
Several models (e.g. the folds of a CV run) are ensembled by mean probability.

Decoding and resampling run in worker processes that feed the model, one pipe each; a worker blocks until
its batch is taken, so memory stays O(workers x batch) whatever the number or length of the files. A
file's windows are always batched on their own (``batch_size`` windows per forward pass, in order), so a
window's score never depends on which other files share the run: a resumed run
(:func:`nfaudio.predict_run.run_prediction`) reproduces an uninterrupted one bit for bit.

:meth:`Predictor.iter_embeddings` / :meth:`Predictor.embed` give the same windows' embeddings (and scores, from the
same pass); :meth:`Predictor.embed_to_dir` writes them to an embedding store (:mod:`nfaudio.embed`).

Post-processing, both optional: time-shift TTA (each window is also scored shifted by a few seconds,
using the neighbouring audio, and the probabilities are averaged) and neighbour smoothing
(``(1 - 2w) p[k] + w p[k-1] + w p[k+1]`` within a file).

Start-up: this module imports neither torch nor the model code. The torch backend loads them to build its models;
onnxruntime and OpenVINO run the graphs of the export cache (:mod:`nfaudio.export_cache`), so with a warm cache
such a process never imports torch, timm or librosa. An ensemble whose members share their frontend settings
computes the log-mel of a batch once (see :mod:`nfaudio.backends`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nfaudio.audio import AudioError
from nfaudio.backends import BACKENDS, Scorer, TorchScorer, embedding_width
from nfaudio.choices import LAST_POLICIES
from nfaudio.config import PredictConfig
from nfaudio.decode import DecodeSpec, iter_decoded
from nfaudio.export_cache import load_runtime_scorer
from nfaudio.formats import FileResult
from nfaudio.inputs import list_audio
from nfaudio.predict_run import RunSummary, run_prediction
from nfaudio.quantize import Int8Options
from nfaudio.rundir import find_checkpoints
from nfaudio.runtime import inference_threads, resolve_device, torch_threads

if TYPE_CHECKING:
    import torch

    from nfaudio.models import AudioClassifier

__all__ = ["FileResult", "Predictor", "load_runtime_scorer", "output_options", "predictor_options",
           "smooth_neighbours"]

log = logging.getLogger(__name__)

def _file_id(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ----------------------------------------------------------------------------- post-processing
def smooth_neighbours(scores: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - 2w) p[k] + w (p[k-1] + p[k+1])`` along axis 0; at an end the missing neighbour's weight stays
    on the window itself (``(1 - w) p[0] + w p[1]``). ``weight`` in ``[0, 0.5]``; one window is unchanged."""
    if not 0.0 <= weight <= 0.5:
        raise ValueError(f"smoothing weight must be in [0, 0.5], got {weight}")
    if weight == 0.0 or len(scores) < 2:
        return scores
    prev = np.concatenate([scores[:1], scores[:-1]])  # p[k-1], with p[0] standing in at the start
    nxt = np.concatenate([scores[1:], scores[-1:]])
    return ((1.0 - 2.0 * weight) * scores + weight * (prev + nxt)).astype(scores.dtype, copy=False)


# ----------------------------------------------------------------------------- predictor
class Predictor:
    """Score long recordings window by window with one model or an ensemble.

    Windows of ``window`` seconds start every ``hop`` seconds. The last-window policy ``last`` decides what
    happens at the end of a file (see :func:`nfaudio.audio.window_starts`): "pad" keeps a final partial window
    zero-padded (a file shorter than a window gives one window), "drop" keeps only full windows, "shift" adds a
    final full window ending at the end of the file. ``end_s`` is always ``start_s + window``.

    Args:
        models: one model, several (mean probability), or a :class:`Scorer` (e.g. an ONNX session ensemble).
        classes: class names in output order.
        window: window length in seconds (the models' training duration).
        hop: hop between windows in seconds (default ``window``: no overlap).
        overlap: alternative to ``hop``: seconds shared by consecutive windows (``hop = window - overlap``).
        batch_size: windows per forward pass (TTA copies included).
        last: last-window policy, "pad", "drop" or "shift".
        device: torch models only: "auto", "cpu", "cuda", ...
        activation: torch models only: "sigmoid" or "softmax".
        tta_shifts: extra time shifts in seconds (e.g. ``(-2.5, 2.5)``); each window's probabilities are
            averaged with those of the windows shifted by these amounts, cut from the neighbouring audio
            (zeros before the start / after the end). Needs ``|shift| <= hop <= window``.
        smoothing: neighbour-smoothing weight in ``[0, 0.5]`` (:func:`smooth_neighbours`), applied per file.
        num_workers: decode processes feeding the model; 0 decodes in the calling process.
        threads: torch intra-op threads while scoring (default: the thread policy for prediction,
            :func:`nfaudio.runtime.inference_threads`: every usable core, decode workers beside them).
        min_duration: files shorter than this (seconds) are skipped as errors.
        decode_timeout: a decode worker that has not finished a file after ``decode_timeout +
            decode_timeout_factor * duration`` seconds of waiting for it is killed and restarted, and the file
            fails (:func:`nfaudio.decode.iter_decoded`); ``None``: no timeout. Not applied with ``num_workers=0``.
        decode_timeout_factor: timeout seconds per second of audio.
        freq_range: ``(low, high)`` Hz written to Raven tables (default ``(0, sample_rate / 2)``).
        sources: model files, recorded in :meth:`fingerprint` (set by :meth:`from_checkpoint`).

    Attributes:
        checkpoint_args: ``(path, kwargs)`` that :meth:`from_checkpoint` was called with (the path resolved), so
            that another process can build the same predictor (:meth:`factory`); ``None`` for in-memory models.

    Raises:
        ValueError: an invalid option.
    """

    def __init__(self, models: AudioClassifier | Sequence[AudioClassifier] | Scorer, classes: Sequence[str],
                 window: float, hop: float | None = None, batch_size: int = 32, last: str = "pad",
                 device: str = "auto", activation: str = "sigmoid", *, tta_shifts: Sequence[float] = (),
                 smoothing: float = 0.0, num_workers: int = 1, min_duration: float = 0.5,
                 freq_range: tuple[float, float] | None = None, sources: Sequence[str | Path] = (),
                 overlap: float | None = None, threads: int | None = None, decode_timeout: float | None = 60.0,
                 decode_timeout_factor: float = 1.0) -> None:
        torch = sys.modules.get("torch")  # a torch model means torch is loaded: never import it for a Scorer
        if torch is not None and isinstance(models, torch.nn.Module):
            models = [models]
        self.scorer: Scorer = (TorchScorer(models, activation, device) if isinstance(models, (list, tuple))
                               else models)
        self.classes = list(classes)
        self.window = float(window)
        if hop and overlap is not None:
            raise ValueError("give hop or overlap, not both")
        self.hop = float(hop) if hop else self.window - float(overlap or 0.0)
        self.batch_size = int(batch_size)
        self.last = last
        self.tta_shifts = tuple(float(s) for s in tta_shifts if s != 0)
        self.smoothing = float(smoothing)
        self.num_workers = int(num_workers)
        self.threads = inference_threads(threads)
        self.min_duration = float(min_duration)
        self.decode_timeout = None if decode_timeout is None else float(decode_timeout)
        self.decode_timeout_factor = float(decode_timeout_factor)
        self.sample_rate = int(self.scorer.sample_rate)
        self.freq_range = tuple(freq_range) if freq_range else (0.0, self.sample_rate / 2.0)
        self.sources = [Path(s) for s in sources]
        self.checkpoint_args: tuple[str, dict[str, Any]] | None = None
        if self.window <= 0 or self.hop <= 0 or self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("window, hop and batch_size must be positive and num_workers >= 0")
        if (self.decode_timeout is not None and self.decode_timeout < 0) or self.decode_timeout_factor < 0:
            raise ValueError("decode_timeout and decode_timeout_factor must be >= 0")
        if last not in LAST_POLICIES:
            raise ValueError(f"last must be one of {LAST_POLICIES}, got {last!r}")
        if self.tta_shifts and not (max(map(abs, self.tta_shifts)) <= self.hop <= self.window):
            raise ValueError(f"TTA shifts need |shift| <= hop <= window, got shifts {self.tta_shifts}, "
                             f"hop {self.hop}, window {self.window}")
        smooth_neighbours(np.zeros((0, 1)), self.smoothing)  # validates the weight

    @property
    def models(self) -> list[torch.nn.Module]:
        """The torch models (empty for another backend)."""
        return list(getattr(self.scorer, "models", []))

    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch", device: str = "auto",
                        threads: int | None = None, precision: str = "fp32", share_frontend: bool = True,
                        int8: Int8Options | None = None, **kwargs: Any) -> Predictor:
        """Build from a checkpoint, a run directory or a CV directory (see :func:`find_checkpoints`).

        Args:
            path: model file(s) location.
            backend: "torch", "onnxruntime" or "openvino" (the latter two run ``.onnx`` files, or the export cache's
                graphs of ``.pt`` files, built on first use: :mod:`nfaudio.export_cache`).
            device: "auto", "cpu", "cuda", ...
            threads: intra-op threads of the backend, torch, onnxruntime or OpenVINO alike (default: the thread
                policy for prediction, :func:`nfaudio.runtime.inference_threads`: every usable core).
            precision: "fp32", or with the openvino backend "bf16" (faster, approximate) or "int8" (quantized,
                calibrated and guarded by ``int8``: :mod:`nfaudio.quantize`).
            share_frontend: members with the same frontend compute the log-mel once per batch (default; the
                scores are the same); ``False`` runs each member whole (for comparison).
            **kwargs: other :class:`Predictor` options (``window`` defaults to the training duration).

        Raises:
            FileNotFoundError: no model at ``path``.
            ValueError: the models disagree on classes, window or sample rate; unknown backend.
            ImportError: the backend's runtime is not installed.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        args = (str(Path(path).resolve()), dict(backend=backend, device=device, threads=threads, precision=precision,
                                                 share_frontend=share_frontend, int8=int8, **kwargs))
        threads = inference_threads(threads)
        paths = find_checkpoints(path)
        if backend == "torch":
            if precision != "fp32":
                raise ValueError(f"precision {precision!r} needs the openvino backend")
            if any(p.suffix == ".onnx" for p in paths):
                raise ValueError(f"{path}: ONNX models need --backend onnxruntime or openvino")
            from nfaudio.models import load_checkpoint

            loaded = [load_checkpoint(p) for p in paths]
            metas = [m for _, m in loaded]
            target = resolve_device(device)  # our own copies: moved, not copied, onto the device
            scorer: Scorer = TorchScorer([m.to(target) for m, _ in loaded], metas[0]["activation"], target,
                                         share_frontend=share_frontend)
        else:
            scorer, metas = load_runtime_scorer(paths, backend, device=device, threads=threads, precision=precision,
                                                share_frontend=share_frontend, int8=int8)
        for p, meta in zip(paths[1:], metas[1:]):
            for key in ("classes", "duration", "sample_rate", "activation"):
                if meta[key] != metas[0][key]:
                    raise ValueError(f"{p}: {key} differs from {paths[0]} ({meta[key]!r} != {metas[0][key]!r})")
        meta = metas[0]
        kwargs.setdefault("window", meta["duration"])
        kwargs.setdefault("freq_range", (meta["fmin"], meta["fmax"]))
        predictor = cls(scorer, meta["classes"], sources=paths, threads=threads, **kwargs)
        predictor.checkpoint_args = args
        return predictor

    def factory(self, **overrides: Any) -> Callable[[], Predictor]:
        """A picklable callable that builds this predictor again in another process (e.g. a Dask worker):
        :meth:`from_checkpoint` with the same arguments, ``overrides`` replacing some of them.

        Raises:
            ValueError: the predictor was built from in-memory models, not by :meth:`from_checkpoint`.
        """
        if self.checkpoint_args is None:
            raise ValueError("this predictor holds in-memory models; another process can only rebuild one made by "
                             "Predictor.from_checkpoint (save the models with nfaudio.save_model first)")
        path, kwargs = self.checkpoint_args
        return functools.partial(type(self).from_checkpoint, path, **{**kwargs, **overrides})

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the scores (models, backend, windows, TTA, smoothing, batching; for int8 the
        quantized graphs, whose folder names carry their calibration set's key)."""
        int8 = {"int8_graphs": list(self.scorer.paths)} if self.scorer.name.endswith("int8") else {}
        return {**int8, "models": [_file_id(p) for p in self.sources], "backend": self.scorer.name,
                "classes_sha1": hashlib.sha1("\n".join(self.classes).encode()).hexdigest(),
                "sample_rate": self.sample_rate, "window": self.window, "hop": self.hop, "last": self.last,
                "batch_size": self.batch_size, "tta_shifts": list(self.tta_shifts), "smoothing": self.smoothing,
                "min_duration": self.min_duration}

    def _decode_spec(self) -> DecodeSpec:
        shifts = (0,) + tuple(int(round(s * self.sample_rate)) for s in self.tta_shifts)
        per_chunk = max(1, self.batch_size // len(shifts))
        return DecodeSpec(sample_rate=self.sample_rate, window=self.window, hop=self.hop, last=self.last,
                          shifts=shifts, chunk=per_chunk, min_duration=self.min_duration)

    def iter_results(self, files: Sequence[str | Path]) -> Iterator[FileResult]:
        """Score ``files`` (decoded by ``num_workers`` processes); yields one :class:`FileResult` per file as it
        finishes (not necessarily in input order), including files that failed (``error`` set)."""
        # torch's threads follow the policy whenever torch is loaded; a runtime scorer set its own at load time
        with torch_threads(self.threads) if "torch" in sys.modules else contextlib.nullcontext():
            yield from self._iter_results(files)

    def iter_embeddings(self, files: Sequence[str | Path], fold_mode: str = "mean") -> Iterator[FileResult]:
        """Embed ``files`` as :meth:`iter_results` scores them (same windows, workers, errors); each result also
        holds ``embeddings (N, D)`` (:meth:`AudioClassifier.forward_embedding`; an ensemble's combined by
        ``fold_mode``, "mean" or "concat": :func:`~nfaudio.backends.combine_embeddings`), scored in the same pass.

        Raises:
            ValueError: TTA shifts are set (an embedding is one window's), an unknown ``fold_mode``, or an ONNX
                model without the embedding output.
        """
        if self.tta_shifts:
            raise ValueError("embeddings are per window: build the predictor without tta_shifts")
        embedding_width(self.scorer.embedding_dims, fold_mode)
        with torch_threads(self.threads) if "torch" in sys.modules else contextlib.nullcontext():
            yield from self._iter_results(files, fold_mode)

    def embed(self, inputs: Iterable[str | Path], fold_mode: str = "mean") -> tuple[pd.DataFrame, np.ndarray]:
        """Every window of every audio file under ``inputs``, in input order: ``(table, embeddings)`` with
        ``table`` :meth:`predict`'s DataFrame (same index and scores) and ``embeddings`` float32 ``(rows, D)``
        aligned with its rows. Failed files are skipped and listed in ``self.errors_``; see :meth:`iter_embeddings`.
        """
        results = sorted(self.iter_embeddings(list_audio(inputs), fold_mode), key=lambda r: r.index)
        self.errors_ = pd.DataFrame([(str(r.path), r.error) for r in results if r.error], columns=["file", "reason"])
        none = np.zeros((0, embedding_width(self.scorer.embedding_dims, fold_mode)), np.float32)
        ok = [r for r in results if not r.error] or [FileResult(Path(), 0, none[:, 0], none[:, 0], None, 0.0,
                                                                embeddings=none)]
        return pd.concat([r.to_frame(self.classes) for r in ok]), np.concatenate([r.embeddings for r in ok])

    def embed_to_dir(self, inputs: Iterable[str | Path], out_dir: str | Path, **options: Any) -> RunSummary:
        """Crash-safe embedding store in ``out_dir``; see :func:`nfaudio.embed.run.run_embedding` for ``options``."""
        from nfaudio.embed.run import run_embedding

        return run_embedding(self, inputs, out_dir, **options)

    def _iter_results(self, files: Sequence[str | Path], fold_mode: str | None = None) -> Iterator[FileResult]:
        spec = self._decode_spec()
        n_shifts = len(spec.shifts)
        parts: dict[int, list[tuple[np.ndarray, ...]]] = {}
        files = [Path(f) for f in files]
        for idx, kind, payload in iter_decoded(files, spec, self.num_workers, timeout=self.decode_timeout,
                                               timeout_factor=self.decode_timeout_factor):
            if kind == "chunk":
                starts, ends, waves = payload
                if fold_mode is None:
                    probs, emb = self.scorer(waves), None  # (n * shifts, C), window-major
                else:
                    emb, probs = self.scorer.embed(waves, fold_mode)  # (n, D), (n, C): no TTA
                probs = probs.reshape(len(starts), n_shifts, -1).mean(axis=1, dtype=np.float32)
                parts.setdefault(idx, []).append((starts, ends, probs, emb))
            elif kind == "done":
                got = parts.pop(idx, [])
                starts = np.concatenate([p[0] for p in got])
                ends = np.concatenate([p[1] for p in got])
                scores = smooth_neighbours(np.concatenate([p[2] for p in got]), self.smoothing)
                emb = None if fold_mode is None else np.concatenate([p[3] for p in got])
                yield FileResult(files[idx], idx, starts, ends, scores.astype(np.float32, copy=False),
                                 float(payload), embeddings=emb)
            else:  # "error": drop what was scored before the failure
                parts.pop(idx, None)
                reason, duration = payload
                log.warning("skipping %s: %s", files[idx], reason)
                yield FileResult(files[idx], idx, np.zeros(0), np.zeros(0), None, duration, reason)

    def iter_file(self, path: str | Path) -> Iterator[tuple[float, float, np.ndarray]]:
        """Yield ``(start_s, end_s, probabilities)`` per window of one file.

        Raises:
            nfaudio.audio.AudioError: the file cannot be scored.
        """

        for res in self.iter_results([path]):
            if res.error:
                raise AudioError(path, res.error)
            yield from zip(res.starts.tolist(), res.ends.tolist(), res.scores)

    def predict_file(self, path: str | Path) -> pd.DataFrame:
        """One file's windows as a DataFrame indexed by ``(file, start_s, end_s)``.

        Raises:
            nfaudio.audio.AudioError: the file cannot be scored.
        """
        rows = list(self.iter_file(path))
        res = FileResult(Path(path), 0, np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                         np.stack([r[2] for r in rows]) if rows else None, 0.0)
        return res.to_frame(self.classes)

    def predict(self, inputs: Iterable[str | Path]) -> pd.DataFrame:
        """Every window of every audio file under ``inputs`` (files, folders, manifests), in input order.

        Files that cannot be scored are skipped with a warning and listed in ``self.errors_``
        (a DataFrame with columns ``file``, ``reason``).

        Returns:
            DataFrame indexed by ``(file, start_s, end_s)`` with one probability column per class.
        """
        results = sorted(self.iter_results(list_audio(inputs)), key=lambda r: r.index)
        self.errors_ = pd.DataFrame([(str(r.path), r.error) for r in results if r.error],
                                    columns=["file", "reason"])
        frames = [r.to_frame(self.classes) for r in results if not r.error]
        if not frames:
            return FileResult(Path(), 0, np.zeros(0), np.zeros(0), None, 0.0).to_frame(self.classes)
        return pd.concat(frames)

    def predict_to_dir(self, inputs: Iterable[str | Path], out_dir: str | Path, **options: Any) -> RunSummary:
        """Crash-safe run writing the chosen output formats to ``out_dir``; see
        :func:`nfaudio.predict_run.run_prediction` for ``options``."""
        return run_prediction(self, inputs, out_dir, **options)


def predictor_options(options: PredictConfig) -> dict[str, Any]:
    """:meth:`Predictor.from_checkpoint` keyword arguments from a recipe's ``predict`` section (the same keys as
    the ``nfaudio predict`` flags); ``window: null`` is left out so the training duration applies."""
    o = options
    kwargs: dict[str, Any] = dict(
        backend=o.backend, device=o.device, threads=o.threads, precision=o.precision, batch_size=o.batch_size,
        hop=o.hop, overlap=o.overlap, last=o.last, tta_shifts=(-o.tta_shift, o.tta_shift) if o.tta_shift else (),
        smoothing=o.smoothing, num_workers=o.workers, min_duration=o.min_duration,
        decode_timeout=o.decode_timeout, decode_timeout_factor=o.decode_timeout_factor,
        int8=Int8Options(tuple(o.calibration), o.calibration_seconds, o.int8_tolerance, bool(o.int8_warn)))
    if o.window is not None:
        kwargs["window"] = o.window
    return kwargs


def output_options(options: PredictConfig) -> dict[str, Any]:
    """:func:`~nfaudio.predict_run.run_prediction` keyword arguments from a recipe's ``predict`` section."""
    o = options
    return dict(formats=list(o.formats), table_format=o.table_format, threshold=o.threshold, top_k=o.top_k,
                cluster=o.cluster)
