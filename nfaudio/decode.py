"""Decode workers for the predictor: processes that decode, resample and cut recordings into windows.

Each worker owns one pipe and blocks until its chunk is taken, so memory stays O(workers x batch) whatever
the number or length of the files. A worker that dies fails only the file it was on and is restarted; so does a
worker that hangs: it is killed once the parent has waited on its file longer than ``timeout + timeout_factor *
duration`` seconds (the duration from the file's header).
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfaudio.audio import AudioError, info, shifted_windows, stream_windows

__all__ = ["DecodeSpec", "iter_decoded"]

log = logging.getLogger(__name__)


# How much a decode worker lowers its scheduling priority (``os.nice`` increment; 0: none). The predictor's model
# gets every core (nfaudio.runtime.inference_threads), so a worker competes with its threads for a core; at normal
# priority it preempts one of them and the others wait at the next barrier; at the lowest priority it decodes in
# their gaps. Measured side by side on 2 cores, 10-min flac, OpenVINO warm, 3 rounds (benchmarks/decode_nice.py,
# benchmarks/results/decode_nice.json), x real time against the worker at nice 0: nice 19 gave 1.01-1.12x on a
# 5-fold eca_nfnet_l0 ensemble, 1.01-1.20x on the demo's 2-fold ensemble, 1.03-1.27x on 5 folds of nfaudio_tiny;
# nice 10 was mixed (0.92-1.26x). The cost: where other jobs at normal priority keep every core busy, a worker
# at nice 19 gets little CPU and the model waits for it; set this to 0 there. Read when a worker starts (workers
# fork, so a caller may change it first).
WORKER_NICE = 19


def _lower_priority(increment: int) -> None:
    if increment <= 0:
        return
    try:
        os.nice(increment)
    except OSError as err:  # a platform or sandbox without it: decoding goes on at normal priority
        log.debug("decode worker: os.nice(%d) failed: %s", increment, err)


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode worker cuts: windows in seconds, TTA shifts in samples (the first is 0)."""

    sample_rate: int
    window: float
    hop: float
    last: str
    shifts: tuple[int, ...]
    chunk: int  # windows per message (one forward pass)
    min_duration: float


def _file_messages(idx: int, path: Path, spec: DecodeSpec) -> Iterator[tuple[int, str, Any]]:
    """Decode one file into ``(idx, "start", duration)`` once the header is read (it sets the file's timeout and
    is not passed on by :func:`iter_decoded`), ``(idx, "chunk", (starts, ends, waves))`` messages, then
    ``(idx, "done", duration)`` or, on any failure, ``(idx, "error", (reason, duration))``."""
    duration = 0.0
    try:
        duration = info(path).duration
        yield idx, "start", duration
        if duration < spec.min_duration:
            yield idx, "error", (f"too short: {duration:.3f} s < min_duration {spec.min_duration:g} s", duration)
            return
        stream = stream_windows(path, spec.sample_rate, spec.window, spec.hop, last=spec.last)
        if len(spec.shifts) > 1:
            stream = shifted_windows(stream, spec.sample_rate, spec.shifts)
        n = 0
        while chunk := list(itertools.islice(stream, spec.chunk)):
            waves = np.concatenate([w.reshape(-1, w.shape[-1]) for _, _, w in chunk])  # (n * shifts, T)
            yield idx, "chunk", (np.array([c[0] for c in chunk]), np.array([c[1] for c in chunk]), waves)
            n += len(chunk)
        if n:
            yield idx, "done", duration
        else:
            yield idx, "error", (f"too short: no full {spec.window:g} s window in {duration:.3f} s "
                                 f"(last={spec.last!r})", duration)
    except AudioError as err:
        yield idx, "error", (err.reason, duration)
    except Exception as err:  # any failure of one file must not stop the run
        log.debug("decoding %s failed", path, exc_info=True)
        yield idx, "error", (f"{type(err).__name__}: {err}", duration)


def _decode_worker(conn: Any, others: Sequence[Any], spec: DecodeSpec, parent: int) -> None:
    """Worker process: receive ``(idx, path)`` tasks on ``conn`` until ``None`` and send back the file's
    messages. Sends block while the parent is busy (backpressure); exits when orphaned."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _lower_priority(WORKER_NICE)  # the model's threads first (WORKER_NICE)
    for other in others:  # the parent's ends of the pipes (this one's too), inherited by fork
        other.close()
    try:
        while True:
            while not conn.poll(0.5):
                if os.getppid() != parent:
                    return
            task = conn.recv()
            if task is None:
                return
            for msg in _file_messages(task[0], Path(task[1]), spec):
                conn.send(msg)
    except (EOFError, OSError):  # the parent went away
        return


def iter_decoded(files: Sequence[Path], spec: DecodeSpec, num_workers: int, *, timeout: float | None = None,
                 timeout_factor: float = 0.0) -> Iterator[tuple[int, str, Any]]:
    """Messages of :func:`_file_messages` for every file, decoded by ``num_workers`` processes (0: inline).

    Each worker has its own pipe and decodes one file at a time; its sends block until the model side reads
    them, so memory stays O(workers x chunk). A worker that dies (e.g. a decoder crash on a corrupt file)
    fails only the file it was decoding and is replaced. A worker that hangs is killed and replaced when the
    time the parent has spent waiting while that worker's file was in progress exceeds ``timeout +
    timeout_factor * duration`` seconds (``timeout`` alone until the header is read); time the caller spends
    between messages (scoring) does not count, since a worker then blocks on its send by design. Inline
    decoding (``num_workers=0``) has no timeout.

    Args:
        files: recordings to decode.
        spec: what to cut.
        num_workers: decode processes (0: decode in this process).
        timeout: base seconds of a file's timeout (``None``: no timeout).
        timeout_factor: extra timeout seconds per second of audio.

    Raises:
        ValueError: a negative timeout or factor.
    """
    if (timeout is not None and timeout < 0) or timeout_factor < 0:
        raise ValueError(f"timeout and timeout_factor must be >= 0, got {timeout} and {timeout_factor}")
    if num_workers == 0 or len(files) == 0:
        for idx, path in enumerate(files):
            yield from (msg for msg in _file_messages(idx, path, spec) if msg[1] != "start")
        return
    from multiprocessing.connection import wait

    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")  # fork: no re-imports
    todo = list(enumerate(files))[::-1]  # pop() from the end = input order
    conns: dict[Any, tuple[Any, int]] = {}  # parent end -> (process, file index it is decoding)
    waited: dict[Any, float] = {}  # parent end -> seconds the parent has waited during its current file
    limits: dict[Any, float] = {}  # parent end -> that file's timeout in seconds

    def assign(conn: Any, proc: Any) -> None:
        if todo:
            idx, path = todo.pop()
            conn.send((idx, str(path)))
            conns[conn] = (proc, idx)
            waited[conn] = 0.0
            limits[conn] = math.inf if timeout is None else timeout
        else:
            conn.send(None)
            conn.close()
            proc.join()

    def start() -> None:
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_decode_worker, name="nfaudio-decode", daemon=True,
                           args=(theirs, [*conns, mine], spec, os.getpid()))
        proc.start()
        theirs.close()
        assign(mine, proc)

    def forget(conn: Any) -> tuple[Any, int]:
        waited.pop(conn)
        limits.pop(conn)
        return conns.pop(conn)

    def retire(conn: Any) -> tuple[Any, int]:
        proc, idx = forget(conn)
        conn.close()
        return proc, idx

    try:
        for _ in range(min(num_workers, len(files))):
            start()
        while conns:
            patience = min(limits[c] - waited[c] for c in conns)
            began = time.monotonic()
            ready = wait(list(conns), timeout=min(1.0, max(patience, 0.0)))
            elapsed = time.monotonic() - began
            for conn in conns:  # every file in progress: the parent was waiting on it
                waited[conn] += elapsed
            for conn in [c for c in conns if c not in ready and waited[c] >= limits[c]]:
                limit = limits[conn]
                proc, idx = retire(conn)
                proc.kill()
                proc.join()
                log.warning("decoder timed out after %.0f s on %s; restarting it", limit, files[idx])
                yield idx, "error", (f"decoder timed out after {limit:.0f} s", 0.0)
                if todo:
                    start()
            for conn in ready:
                proc, idx = conns[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died mid-file
                    retire(conn)
                    proc.join()
                    log.warning("decode worker died (exit code %s) on %s; restarting it", proc.exitcode, files[idx])
                    yield idx, "error", (f"decoder process died (exit code {proc.exitcode})", 0.0)
                    if todo:
                        start()
                    continue
                if msg[1] == "start":
                    if timeout is not None:
                        limits[conn] = timeout + timeout_factor * float(msg[2])
                    continue
                if msg[1] != "chunk":
                    forget(conn)
                    assign(conn, proc)
                yield msg
    finally:
        for conn, (proc, _) in list(conns.items()):
            conn.close()  # the worker sees EOF/EPIPE and exits
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join()
