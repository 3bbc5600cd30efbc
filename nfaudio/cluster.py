"""Folder prediction on a Dask cluster: one task per file, scored by a predictor each worker builds once.

:func:`connect` opens a ``dask.distributed`` client for a cluster spec: ``local:N`` (a LocalCluster of N worker
processes with one thread each, started here and closed on exit), ``tcp://HOST:PORT`` (a running scheduler) or the
path of a scheduler file (what ``dask scheduler --scheduler-file`` and dask-jobqueue write).
:func:`iter_cluster_results` submits one task per file, the largest files first so that no long file is left to
finish alone at the end. Each worker thread builds the predictor once per run from a picklable factory
(:func:`worker_factory`: :meth:`~nfaudio.predict.Predictor.from_checkpoint` with the run's arguments, decoding
inline) and returns the file's :class:`~nfaudio.formats.FileResult`, failed files included.

A worker that dies mid-file loses nothing: the scheduler runs the task again on another worker. A file whose task
kills every worker that tries it (dask's ``distributed.scheduler.allowed-failures``, 3 by default) comes back as a
failed file. The journal, resume and outputs stay with the client: :func:`nfaudio.predict_run.run_prediction` with
``cluster=``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nfaudio.backends import require
from nfaudio.formats import FileResult

if TYPE_CHECKING:  # type names only
    from distributed import Client

    from nfaudio.predict import Predictor

__all__ = ["check_spec", "connect", "iter_cluster_results", "parse_spec", "score_on_cluster", "worker_factory"]

log = logging.getLogger(__name__)

_LOCAL = re.compile(r"local:(\d+)")
_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):\d+")
_THREAD = threading.local()  # in a worker thread: the predictor of the run it served last


def parse_spec(spec: str) -> tuple[str, Any]:
    """What a cluster spec names: ``("local", N)``, ``("address", "tcp://HOST:PORT")`` or ``("file", Path)``.

    Raises:
        ValueError: naming the spec: not one of the three forms, ``local:0``, or a ``.json`` file that does not
            exist.
    """
    text = str(spec).strip()
    if m := _LOCAL.fullmatch(text):
        if int(m.group(1)) < 1:
            raise ValueError(f"cluster {spec!r}: local:N needs at least one worker")
        return "local", int(m.group(1))
    if _ADDRESS.fullmatch(text):
        return "address", text
    path = Path(text).expanduser()
    if text and path.is_file():
        return "file", path
    if path.suffix == ".json":
        raise ValueError(f"cluster {spec!r}: no scheduler file at {path}")
    raise ValueError(f"cluster {spec!r} is none of local:N, tcp://HOST:PORT or a scheduler file (JSON)")


def check_spec(spec: str) -> None:
    """Check ``spec`` and that dask.distributed is installed, without connecting to anything.

    Raises:
        ValueError: a bad spec (:func:`parse_spec`).
        ImportError: dask.distributed is not installed.
    """
    parse_spec(spec)
    require("distributed", "dask")


@contextlib.contextmanager
def connect(spec: str) -> Iterator[Client]:
    """A ``dask.distributed`` client for ``spec`` (see :func:`parse_spec`); on exit the client is closed, and so
    is the LocalCluster started for ``local:N``.

    Raises:
        ValueError: a bad spec (before anything is started), or no scheduler answers at the address or scheduler
            file within dask's connect timeout (``distributed.comm.timeouts.connect``, 30 s by default).
        ImportError: dask.distributed is not installed.
    """
    kind, value = parse_spec(spec)
    distributed = require("distributed", "dask")
    import dask

    board = kind != "local" or importlib.util.find_spec("bokeh") is not None  # a dashboard needs bokeh
    with _quiet("distributed", logging.WARNING), contextlib.ExitStack() as stack:
        if kind == "local":
            with dask.config.set(_local_config()):  # read by the nannies when they are made
                cluster = distributed.LocalCluster(n_workers=value, threads_per_worker=1, processes=True,
                                                   dashboard_address=":0")  # a free port, not a busy 8787
            stack.callback(_close_local, cluster)
            client = stack.enter_context(distributed.Client(cluster))
        else:
            try:
                client = stack.enter_context(distributed.Client(value) if kind == "address"
                                             else distributed.Client(scheduler_file=str(value)))
            except OSError as err:  # timed out or refused
                raise ValueError(f"cluster {spec!r}: no scheduler answers ({err})") from err
        workers = client.scheduler_info()["workers"]
        log.info("Dask cluster %s: %d workers, %d threads%s", spec, len(workers),
                 sum(w["nthreads"] for w in workers.values()), f"; dashboard {client.dashboard_link}" if board else "")
        yield client


def _local_config() -> dict[str, Any]:
    """Dask settings of the workers of ``local:N``: dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` for its workers,
    which turns off glibc's adaptive mmap threshold, so every decoded block is mapped and faulted in afresh (about
    1.7x the CPU of a file in one process); the statistical profiler, sampling every 10 ms, is off too."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return {"distributed.nanny.pre-spawn-environ": environ, "distributed.worker.profile.enabled": False}


@contextlib.contextmanager
def _quiet(name: str, level: int) -> Iterator[None]:
    """Raise the level of logger ``name`` to ``level`` for the block (dask's INFO lines drown the run's own), unless
    nfaudio logs at DEBUG (``nfaudio --debug``)."""
    logger = logging.getLogger(name)
    before = logger.level
    if not logging.getLogger("nfaudio").isEnabledFor(logging.DEBUG):
        logger.setLevel(max(before, level))
    try:
        yield
    finally:
        logger.setLevel(before)


def _close_local(cluster: Any) -> None:
    # a worker that is slow to exit is killed after a few seconds: expected here, all results are in
    with _quiet("distributed.nanny", logging.ERROR):
        cluster.close()


def worker_factory(predictor: Predictor) -> Callable[[], Predictor]:
    """The picklable factory a worker builds ``predictor`` with: its :meth:`~nfaudio.predict.Predictor.factory`,
    decoding inline (``num_workers=0``), one torch thread per task unless ``threads`` was given (a worker runs as
    many files at once as it has Dask threads).

    Raises:
        ValueError: ``predictor`` was not made by :meth:`~nfaudio.predict.Predictor.from_checkpoint`.
    """
    threads = predictor.checkpoint_args[1].get("threads") if predictor.checkpoint_args else None
    return predictor.factory(num_workers=0, threads=threads or 1)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # missing here: the worker reports it
        return 0


def _score_file(factory: Callable[[], Predictor], run: str, path: str) -> FileResult:
    """The task: score one file with this worker thread's predictor for ``run`` (built on first use)."""
    if getattr(_THREAD, "run", None) != run:
        _THREAD.run, _THREAD.predictor = None, None  # let the previous run's models go first
        _THREAD.predictor = factory()
        _THREAD.run = run
    (result,) = _THREAD.predictor.iter_results([path])
    return result


def iter_cluster_results(client: Client, factory: Callable[[], Predictor], files: Sequence[Path]
                         ) -> Iterator[FileResult]:
    """Score ``files`` on the cluster of ``client``, one task per file, submitted largest first; yields each
    file's :class:`FileResult` as it finishes (``path`` and ``index`` as in ``files``).

    Args:
        client: a client of the cluster (:func:`connect`).
        factory: builds the predictor on a worker (:func:`worker_factory`).
        files: the audio files; the workers must see them at the same absolute paths.

    Raises:
        Exception: whatever a task raised other than a file error (e.g. the model cannot be loaded on a worker);
            the tasks not yet finished are cancelled.
    """
    distributed = require("distributed", "dask")
    files = [Path(f) for f in files]
    run = uuid.uuid4().hex[:12]
    order = sorted(range(len(files)), key=lambda i: _size(files[i]), reverse=True)
    futures = {client.submit(_score_file, factory, run, str(files[i].resolve()), key=f"nfaudio-{run}-{i}",
                             priority=len(files) - rank): i for rank, i in enumerate(order)}
    try:
        for future in distributed.as_completed(list(futures)):
            i = futures.pop(future)
            try:
                result = future.result()
            except distributed.scheduler.KilledWorker:
                result = FileResult(files[i], i, np.zeros(0), np.zeros(0), None, 0.0,
                                    "every Dask worker that scored it died (KilledWorker)")
            future.release()
            if result.error:
                log.warning("skipping %s: %s", files[i], result.error)
            result.path, result.index = files[i], i
            yield result
    finally:
        if futures:
            client.cancel(list(futures))


def score_on_cluster(spec: str, factory: Callable[[], Predictor], files: Sequence[Path]) -> Iterator[FileResult]:
    """:func:`iter_cluster_results` on the cluster of ``spec`` (:func:`connect`), connected for the duration of
    the iteration; no file, no connection."""
    if not files:
        return
    with connect(spec) as client:
        yield from iter_cluster_results(client, factory, files)
