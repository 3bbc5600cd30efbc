"""The crash-safe embedding run behind ``nfaudio embed``: every window's embedding into an embedding store, resumable.

:func:`run_embedding` streams :meth:`Predictor.iter_embeddings` (the prediction run's windows, hop and last-window
policy, decode workers, decode timeouts and backends) into a :class:`~nfaudio.embed.store.StoreWriter`. Files go
into the store in input order (a file that finishes early waits for the ones before it), whole, in shards of about
``shard_rows`` windows; a shard is also written ``flush_seconds`` after the previous one, so a kill loses at most
that much work. The store's ``embeddings.json`` is the run's journal: a shard exists once it is listed there, and
the same command run again (even after ``kill -9``) keeps the listed shards, skips their files and ends with the
same rows (keys, embeddings, scores) as an uninterrupted run; only the shard boundaries may differ. Files that
cannot be read go to ``OUT/errors.csv`` (file, reason) as in ``nfaudio predict``, and are tried again on a rerun.

Memory: one shard's buffer (``shard_rows x D`` float32; 8192 x 2304 = 75 MB for eca_nfnet_l0), the decode
workers' chunks, and the finished files waiting for an earlier, longer one; never the whole archive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from nfaudio.backends import embedding_width
from nfaudio.embed.store import META, SHARDS, StoreConflictError, StoreWriter
from nfaudio.fileio import atomic_open
from nfaudio.formats import write_rows
from nfaudio.inputs import list_audio
from nfaudio.predict_run import RunConflictError, RunSummary

if TYPE_CHECKING:  # type names only: the predictor imports this module, not the other way round
    from nfaudio.formats import FileResult
    from nfaudio.predict import Predictor

__all__ = ["ERRORS", "run_embedding", "store_info"]

log = logging.getLogger(__name__)

ERRORS = "errors.csv"
_LOCK = ".nfaudio-embed.lock"


def store_info(predictor: Predictor, fold_mode: str) -> dict[str, Any]:
    """What a store records about how its embeddings were made (a resumed store must match it): the predictor's
    fingerprint (models, backend, window, hop, last, batch size, ...), the fold mode, each model's width, the
    embedding's definition."""
    dims = list(predictor.scorer.embedding_dims)
    return {**predictor.fingerprint(), "fold_mode": fold_mode, "model_dims": dims,
            "embedding": "AudioClassifier.forward_embedding: the pooled features the head's class projections see"}


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One writer per store folder (an advisory lock, released when this process ends, even by ``kill -9``)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK, "w") as fh:
        try:
            import fcntl

            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError as err:
            raise RunConflictError(f"another run is writing to {root}") from err
        yield


def _in_order(results: Iterable[FileResult]) -> Iterator[FileResult]:
    """``results`` (each with ``index``, in any order) in index order, each as soon as those before it are out."""
    pending: dict[int, FileResult] = {}
    nxt = 0
    for res in results:
        pending[res.index] = res
        while nxt in pending:
            yield pending.pop(nxt)
            nxt += 1
    yield from (pending[i] for i in sorted(pending))  # only if indices were skipped


def run_embedding(predictor: Predictor, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                  fold_mode: str = "mean", scores: bool = False, shard_rows: int = 8192, flush_seconds: float = 300.0,
                  overwrite: bool = False, progress: bool | None = None) -> RunSummary:
    """Embed every window of every audio file under ``inputs`` into the store ``out_dir``; resumable.

    Args:
        predictor: the :class:`~nfaudio.predict.Predictor` (without TTA shifts).
        inputs: files, folders and manifests (:func:`~nfaudio.inputs.list_audio`).
        out_dir: the store folder (created); ``errors.csv`` is written next to ``embeddings.json``.
        fold_mode: how an ensemble's (a CV run's) embeddings combine: "mean" (``D`` wide) or "concat"
            (``models x D``); see :func:`nfaudio.backends.combine_embeddings`. The width is the store's ``dim``.
        scores: also store each window's class probabilities (the predictor's, as :meth:`Predictor.predict`).
        shard_rows: windows per shard (bounds the memory held for writing).
        flush_seconds: write the buffered files as a shard at least this often.
        overwrite: discard a store already in ``out_dir`` instead of resuming it.
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        A :class:`~nfaudio.predict_run.RunSummary` (``n_resumed``: files already in the store).

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: no audio files, TTA shifts, an unknown fold mode, an ONNX model without the embedding output.
        StoreConflictError: ``out_dir`` holds a store made with other settings (and ``overwrite`` is false).
        RunConflictError: another process is writing to ``out_dir``.
    """
    from tqdm.auto import tqdm  # deferred: only a run needs the progress bar

    if predictor.tta_shifts:
        raise ValueError("embeddings are per window: build the predictor without tta_shifts")
    width = embedding_width(predictor.scorer.embedding_dims, fold_mode)
    files = list_audio(inputs)
    if not files:
        raise ValueError("no audio files in the inputs")
    out_dir = Path(out_dir)
    with _locked(out_dir):
        if overwrite:
            (out_dir / META).unlink(missing_ok=True)
            shutil.rmtree(out_dir / SHARDS, ignore_errors=True)
        try:
            writer = StoreWriter(out_dir, width, predictor.classes if scores else (), store_info(predictor, fold_mode),
                                 shard_rows=shard_rows, resume=True)
        except StoreConflictError as err:
            raise StoreConflictError(f"{err}, or pass --overwrite (overwrite=True)") from None
        done = writer.done
        todo = [f for f in files if str(f) not in done]
        errors: dict[str, str] = {}
        audio, t0, last_flush = 0.0, time.perf_counter(), time.monotonic()
        bar = tqdm(total=len(files), initial=len(files) - len(todo), unit="file", desc="embed", file=sys.stderr,
                   disable=None if progress is None else not progress, dynamic_ncols=True)
        results = predictor.iter_embeddings(todo, fold_mode)
        complete = False
        try:
            for res in _in_order(results):
                if res.error:
                    errors[str(res.path)] = res.error
                else:
                    if writer.add(str(res.path), res.starts, res.ends, res.embeddings, res.scores if scores else None):
                        last_flush = time.monotonic()
                    elif time.monotonic() - last_flush >= flush_seconds:
                        writer.flush()
                        last_flush = time.monotonic()
                    audio += res.duration
                rate = audio / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"{audio / 3600:.2f} h audio, {rate:.0f}x real time, {len(errors)} failed")
                bar.update(1)
            complete = True
        finally:
            results.close()  # stops the decode workers at once, also on an error
            bar.close()
            writer.close(complete=complete)  # the finished files reach disk either way
        err = pd.DataFrame([(str(f), errors[str(f)]) for f in files if str(f) in errors], columns=["file", "reason"])
        with atomic_open(out_dir / ERRORS) as fh:
            write_rows(err, fh)
    if errors:
        log.warning("%d of %d files could not be embedded (see %s)", len(errors), len(files), out_dir / ERRORS)
    return RunSummary(out_dir, len(files), len(todo) - len(errors), len(files) - len(todo), len(errors), audio,
                      time.perf_counter() - t0, [out_dir / META, out_dir / ERRORS])
