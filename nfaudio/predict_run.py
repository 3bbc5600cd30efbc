"""The crash-safe prediction run behind ``nfaudio predict``: score every file, write the chosen outputs, resume.

:func:`run_prediction` streams results to disk. Each finished file's scores go to a journal in ``OUT/.nfaudio/``
(``settings.json`` the settings that determine the scores, ``journal.jsonl`` one line per finished file, ``parts/``
one ``.npz`` per file), and per-file Raven/Audacity tables are written right away. The combined outputs are
assembled at the end, file by file in input order, so nothing is held for the whole run. After a crash (even
``kill -9``) the same command skips finished files and ends with byte-identical outputs. Every output file is
written to a temporary name and renamed into place. The formats themselves are :mod:`nfaudio.formats`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nfaudio.fileio import TMP_SUFFIX, atomic_open
from nfaudio.formats import (
    FORMATS,
    TABLE_FORMATS,
    empty_output,
    scores_frame,
    to_audacity,
    to_detections,
    to_kaleidoscope,
    to_raven,
    to_submission,
    to_table,
    write_rows,
)
from nfaudio.inputs import list_audio

if TYPE_CHECKING:  # type names only: the predictor imports this module, not the other way round
    from nfaudio.formats import FileResult
    from nfaudio.predict import Predictor

__all__ = ["Journal", "RunConflictError", "RunSummary", "run_prediction"]

log = logging.getLogger(__name__)

JOURNAL_DIR = ".nfaudio"
_TMP = TMP_SUFFIX  # suffix of files being written; leftovers of a killed run are removed on the next


class _Output:
    """One combined output file, filled file by file: ``add(frame, detections, offset)`` then ``close()``."""

    def __init__(self, path: Path, stack: contextlib.ExitStack, binary: bool = False) -> None:
        self.path = path
        self.fh = stack.enter_context(atomic_open(path, "wb" if binary else "w"))
        self.first = True

    def write(self, df: pd.DataFrame, sep: str = ",") -> None:
        write_rows(df, self.fh, header=self.first, sep=sep)
        self.first = False


class RunConflictError(ValueError):
    """The output folder holds an unfinished or finished run made with other settings."""


class Journal:
    """Crash-safe record of finished files under ``root`` (see the module docstring).

    Args:
        root: the journal folder (``OUT/.nfaudio``).
        fingerprint: settings that determine the scores; a journal with other settings is refused.
        overwrite: discard an existing journal instead of resuming it.

    Raises:
        RunConflictError: the journal was written with other settings (and ``overwrite`` is false).
    """

    def __init__(self, root: Path, fingerprint: dict[str, Any], overwrite: bool = False) -> None:
        self.root = root
        self.parts = root / "parts"
        root.mkdir(parents=True, exist_ok=True)
        self._lock = open(root / "lock", "w")  # noqa: SIM115 - held until close()
        try:
            import fcntl

            fcntl.lockf(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # per process: not inherited by workers
        except ImportError:  # not POSIX: no lock
            pass
        except OSError as err:
            self._lock.close()
            raise RunConflictError(f"another run is writing to {root.parent}") from err
        settings, path = root / "settings.json", root / "journal.jsonl"
        if overwrite:
            for old in (settings, path, root / "outputs.json"):
                old.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        if settings.exists():
            old = json.loads(settings.read_text())
            if old != json.loads(json.dumps(fingerprint)):
                self._lock.close()
                changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise RunConflictError(f"{root.parent} holds a run with other settings ({', '.join(changed)}); "
                                       "pass --overwrite (overwrite=True) to discard it or choose another output")
        self.parts.mkdir(exist_ok=True)
        with atomic_open(settings) as fh:
            json.dump(fingerprint, fh, indent=1, sort_keys=True)
        self.done: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                    entry = json.loads(line)
                    if (self.parts / entry["part"]).is_file():
                        self.done[entry["file"]] = entry
        with atomic_open(path) as fh:  # drop a torn last line before appending
            fh.writelines(json.dumps(e, sort_keys=True) + "\n" for e in self.done.values())
        self._fh = open(path, "a")  # noqa: SIM115 - closed in close()

    def record(self, key: str, result: FileResult) -> None:
        """Store one finished file: its part first, then the journal line (flushed and fsynced)."""
        part = hashlib.sha1(key.encode()).hexdigest()[:20] + ".npz"
        with atomic_open(self.parts / part, "wb") as fh:
            np.savez(fh, starts=result.starts, ends=result.ends, scores=result.scores)
        entry = {"file": key, "part": part, "duration": result.duration, "windows": len(result.starts)}
        self._fh.write(json.dumps(entry, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done[key] = entry

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, scores)`` of a finished file."""
        with np.load(self.parts / self.done[key]["part"]) as z:
            return z["starts"], z["ends"], z["scores"]

    def close(self) -> None:
        self._fh.close()
        self._lock.close()  # releases the lock


def _key(path: Path) -> str:
    return str(path.resolve())


@dataclass
class RunSummary:
    """What :func:`run_prediction` did. ``audio_seconds``/``seconds`` cover the files scored in this call."""

    out_dir: Path
    n_files: int
    n_scored: int
    n_resumed: int
    n_failed: int
    audio_seconds: float
    seconds: float
    outputs: list[Path] = field(default_factory=list)

    @property
    def realtime_factor(self) -> float:
        """Audio seconds scored per wall-clock second."""
        return self.audio_seconds / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        failed = f", {self.n_failed} failed (see {self.out_dir / 'errors.csv'})" if self.n_failed else ""
        resumed = f", {self.n_resumed} from an earlier run" if self.n_resumed else ""
        return (f"{self.n_files - self.n_failed}/{self.n_files} files scored{resumed}{failed}; "
                f"{self.audio_seconds / 3600:.2f} h of audio in {self.seconds:.1f} s "
                f"({self.realtime_factor:.1f}x real time); outputs in {self.out_dir}")


def _per_file_names(files: Sequence[Path]) -> dict[str, str]:
    """File key -> output name: the path relative to the files' common folder, without its suffix."""
    if not files:
        return {}
    parents = [str(f.resolve().parent) for f in files]
    root = Path(os.path.commonpath(parents))
    return {_key(f): f.resolve().relative_to(root).with_suffix("").as_posix() for f in files}


def _write_per_file(out_dir: Path, name: str, detections: pd.DataFrame, formats: Sequence[str],
                    freq_range: tuple[float, float], only_missing: bool = False) -> None:
    for fmt, path in (("raven", out_dir / "raven" / f"{name}.selections.txt"),
                      ("audacity", out_dir / "audacity" / f"{name}.txt")):
        if fmt in formats and not (only_missing and path.exists()):
            with atomic_open(path) as fh:
                if fmt == "raven":
                    write_rows(to_raven(detections, freq_range), fh, sep="\t")
                else:
                    write_rows(to_audacity(detections), fh, header=False, sep="\t")


def run_prediction(predictor: Predictor, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                   formats: Sequence[str] = ("submission", "table"), table_format: str = "csv",
                   threshold: float = 0.5, top_k: int | None = None, overwrite: bool = False,
                   progress: bool | None = None, cluster: str | None = None) -> RunSummary:
    """Score every audio file under ``inputs`` and write the chosen outputs to ``out_dir``; resumable.

    Outputs (``formats``): ``submission`` -> ``submission.csv``; ``table`` -> ``scores.csv`` or
    ``scores.parquet``; ``detections`` -> ``detections.csv``; ``raven`` -> ``raven/<file>.selections.txt``
    per file plus ``raven_selections.txt`` (with ``Begin Path``, ``File Offset (s)``); ``audacity`` ->
    ``audacity/<file>.txt``; ``kaleidoscope`` -> ``kaleidoscope.csv`` (the detections as Kaleidoscope CSV).
    ``errors.csv`` (file, reason) is always written. Per-file names are the paths relative to the input files'
    common folder.
    With ``cluster``, the files are scored by Dask workers (:mod:`nfaudio.cluster`) and this process keeps the
    same journal: resume, ``errors.csv`` and the outputs are those of a run without a cluster.

    Args:
        predictor: the :class:`~nfaudio.predict.Predictor`.
        inputs: files, folders and manifests (:func:`~nfaudio.inputs.list_audio`).
        out_dir: output folder (created).
        formats: any of :data:`FORMATS`.
        table_format: "csv" or "parquet" (needs pyarrow) for the wide table.
        threshold: minimum score of a detection (detections, Raven, Audacity, Kaleidoscope).
        top_k: at most this many detections per window (the best ones).
        overwrite: discard a previous run in ``out_dir`` instead of resuming it.
        progress: show a progress bar (default: when stderr is a terminal).
        cluster: score on a Dask cluster: ``local:N``, ``tcp://HOST:PORT`` or a scheduler file
            (:func:`nfaudio.cluster.connect`); the predictor must come from ``Predictor.from_checkpoint``.

    Returns:
        A :class:`RunSummary`.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: unknown format, no audio files, missing parquet engine; a bad cluster spec, or a cluster with
            a predictor of in-memory models.
        ImportError: a cluster without dask.distributed installed.
        RunConflictError: ``out_dir`` holds a run with other settings.
    """
    from tqdm.auto import tqdm  # deferred: only a run needs the progress bar

    if cluster is not None:
        from nfaudio.cluster import check_spec, score_on_cluster, worker_factory

        factory = worker_factory(predictor)  # all checked before anything is written
        check_spec(cluster)

    bad = sorted(set(formats) - set(FORMATS))
    if bad or table_format not in TABLE_FORMATS:
        raise ValueError(f"unknown output format(s) {bad or table_format}; choose from {FORMATS}, {TABLE_FORMATS}")
    if "table" in formats and table_format == "parquet":
        _parquet()
    files = list_audio(inputs)
    if not files:
        raise ValueError("no audio files in the inputs")
    out_dir = Path(out_dir)
    names = _per_file_names(files)
    journal = Journal(out_dir / JOURNAL_DIR, predictor.fingerprint(), overwrite)
    for stale in out_dir.rglob("*" + _TMP):  # half-written files of a killed run (the journal lock is ours)
        stale.unlink()
    opts_path = journal.root / "outputs.json"
    opts = {"formats": sorted(formats), "threshold": threshold, "top_k": top_k}
    if not opts_path.exists() or json.loads(opts_path.read_text()) != opts:
        for sub in ("raven", "audacity"):  # per-file tables of other options are rewritten at the end
            shutil.rmtree(out_dir / sub, ignore_errors=True)
        with atomic_open(opts_path) as fh:
            json.dump(opts, fh)
    todo = [f for f in files if _key(f) not in journal.done]
    n_resumed = len(files) - len(todo)
    errors: dict[str, str] = {}
    audio, t0 = 0.0, time.perf_counter()
    bar = tqdm(total=len(files), initial=n_resumed, unit="file", desc="predict", file=sys.stderr,
               disable=None if progress is None else not progress, dynamic_ncols=True)
    results = predictor.iter_results(todo) if cluster is None else score_on_cluster(cluster, factory, todo)
    try:
        for res in results:
            key = _key(res.path)
            if res.error:
                errors[key] = res.error
            else:
                dets = to_detections(res.to_frame(predictor.classes), threshold, top_k)
                _write_per_file(out_dir, names[key], dets, formats, predictor.freq_range)
                journal.record(key, res)
                audio += res.duration
            rate = audio / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{audio / 3600:.2f} h audio, {rate:.0f}x real time, {len(errors)} failed")
            bar.update(1)
    finally:
        results.close()  # stops decode workers or Dask tasks at once, also on an error
        bar.close()
        journal.close()
    outputs = _finalize(predictor, files, journal, errors, names, out_dir, formats, table_format, threshold, top_k)
    return RunSummary(out_dir, len(files), len(todo) - len(errors), n_resumed, len(errors), audio,
                      time.perf_counter() - t0, outputs)


def _parquet() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ValueError("parquet output needs pyarrow (pip install pyarrow); use table_format='csv'") from err
    return pa, pq


def _finalize(predictor: Predictor, files: Sequence[Path], journal: Journal, errors: dict[str, str],
              names: dict[str, str], out_dir: Path, formats: Sequence[str], table_format: str, threshold: float,
              top_k: int | None) -> list[Path]:
    """Assemble the combined outputs from the journal, one file at a time in input order."""
    classes = predictor.classes
    written: list[Path] = []
    offset = 0.0
    dupes: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        out = {fmt: _Output(out_dir / name, stack) for fmt, name in
               (("submission", "submission.csv"), ("table", "scores.csv"), ("detections", "detections.csv"),
                ("raven", "raven_selections.txt"), ("kaleidoscope", "kaleidoscope.csv"))
               if fmt in formats and not (fmt == "table" and table_format == "parquet")}
        parquet = None
        if "table" in formats and table_format == "parquet":
            parquet = stack.enter_context(_ParquetTable(out_dir / "scores.parquet", classes))
        n_sel = 0
        for f in files:
            key = _key(f)
            if key not in journal.done:
                continue
            starts, ends, scores = journal.load(key)
            frame = scores_frame(f, starts, ends, scores, classes)
            if f.stem in dupes and dupes[f.stem] != key and "submission" in formats:
                log.warning("%s and %s share the stem %r: their submission row_ids collide", dupes[f.stem], key,
                            f.stem)
            dupes.setdefault(f.stem, key)
            if "submission" in out:
                out["submission"].write(to_submission(frame))
            if "table" in out:
                out["table"].write(to_table(frame))
            if parquet is not None:
                parquet.write(to_table(frame))
            dets = to_detections(frame, threshold, top_k)
            if "detections" in out:
                out["detections"].write(dets)
            if "raven" in out:
                raven = to_raven(dets, predictor.freq_range, offsets={str(f): offset})
                raven["Selection"] += n_sel
                n_sel += len(raven)
                out["raven"].write(raven, sep="\t")
            if "kaleidoscope" in out:
                out["kaleidoscope"].write(to_kaleidoscope(dets, overlap=predictor.window - predictor.hop))
            _write_per_file(out_dir, names[key], dets, formats, predictor.freq_range, only_missing=True)
            offset += float(journal.done[key]["duration"])
        for o in out.values():
            if o.first:  # no file scored: still write the header
                o.write(empty_output(o.path.name, classes), sep="\t" if o.path.suffix == ".txt" else ",")
        written = [o.path for o in out.values()] + ([parquet.path] if parquet is not None else [])
    err = pd.DataFrame([(str(f), errors[_key(f)]) for f in files if _key(f) in errors], columns=["file", "reason"])
    with atomic_open(out_dir / "errors.csv") as fh:
        write_rows(err, fh)
    return [*written, out_dir / "errors.csv"]


class _ParquetTable:
    """The wide table as parquet (pyarrow), one row group per file: float64 times, float32 scores."""

    def __init__(self, path: Path, classes: Sequence[str]) -> None:
        pa, pq = _parquet()
        self.path = path
        self.tmp = path.with_name(path.name + _TMP)
        fields = [pa.field("file", pa.string()), pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64())]
        self.schema = pa.schema(fields + [pa.field(c, pa.float32()) for c in classes])
        self.writer = pq.ParquetWriter(str(self.tmp), self.schema)
        self.pa = pa

    def write(self, df: pd.DataFrame) -> None:
        self.writer.write_table(self.pa.Table.from_pandas(df, schema=self.schema, preserve_index=False))

    def __enter__(self) -> _ParquetTable:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.writer.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
