"""Prediction outputs and the crash-safe prediction run.

Converters from the prediction table (a DataFrame indexed by ``(file, start_s, end_s)``, one probability
column per class) to each output format: :func:`to_submission` (BirdCLEF, ``row_id = <stem>_<end second>``),
:func:`to_table` (wide), :func:`to_detections` (long: file, start_s, end_s, label, score above a threshold
and/or top-k), :func:`to_raven` (Raven Pro selection table) and :func:`to_audacity` (label track).

:func:`run_prediction` (``nfaudio predict``) streams results to disk. Each finished file's scores go to a
journal in ``OUT/.nfaudio/`` (``run.json`` settings, ``journal.jsonl`` one line per finished file, ``parts/``
one ``.npz`` per file), and per-file Raven/Audacity tables are written right away. The combined outputs are
assembled at the end, file by file in input order, so nothing is held for the whole run. After a crash (even
``kill -9``) the same command skips finished files and ends with byte-identical outputs. Every output file is
written to a temporary name and renamed into place.
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
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nfaudio.fileio import TMP_SUFFIX, atomic_open

if TYPE_CHECKING:
    from nfaudio.predict import FileResult, Predictor

__all__ = ["FORMATS", "RAVEN_COLUMNS", "RunSummary", "run_prediction", "to_audacity", "to_detections", "to_raven",
           "to_submission", "to_table"]

log = logging.getLogger(__name__)

FORMATS = ("submission", "table", "detections", "raven", "audacity")
TABLE_FORMATS = ("csv", "parquet")
RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Species", "Confidence"]
FLOAT_FORMAT = "%.6g"
_JOURNAL_DIR = ".nfaudio"
_TMP = TMP_SUFFIX  # suffix of files being written; leftovers of a killed run are removed on the next


# ----------------------------------------------------------------------------- converters
def _fmt_seconds(values: Iterable[float]) -> list[str]:
    """Times as short exact decimals: 5.0 -> "5", 7.25 -> "7.25" (microsecond resolution)."""
    return [f"{v:.6f}".rstrip("0").rstrip(".") for v in values]


def to_submission(scores: pd.DataFrame) -> pd.DataFrame:
    """BirdCLEF submission: ``row_id = <file stem>_<end second>`` then the class columns in order.

    Args:
        scores: prediction table indexed by ``(file, start_s, end_s)``.
    Returns:
        DataFrame with ``row_id`` and one column per class (non-integral end times keep their decimals).
    """
    idx = scores.index
    stems = [Path(f).stem for f in idx.get_level_values("file")]
    ends = _fmt_seconds(idx.get_level_values("end_s").to_numpy(dtype=float))
    out = scores.reset_index(drop=True)
    out.insert(0, "row_id", [f"{s}_{e}" for s, e in zip(stems, ends)])
    return out


def to_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Wide table: columns ``file, start_s, end_s`` then one probability column per class."""
    return scores.reset_index()


def to_detections(scores: pd.DataFrame, threshold: float = 0.5, top_k: int | None = None) -> pd.DataFrame:
    """Long format ``file, start_s, end_s, label, score``: per window, the classes scoring ``>= threshold``
    (and among them the ``top_k`` best when given), best first; windows in table order.

    Raises:
        ValueError: ``top_k < 1``.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    values = scores.to_numpy(dtype=np.float32)
    order = np.argsort(-values, axis=1, kind="stable")  # per window, best first; ties in class order
    if top_k is not None:
        order = order[:, :top_k]
    ranked = np.take_along_axis(values, order, axis=1)
    rows, ranks = np.nonzero(ranked >= threshold)
    idx = scores.index
    labels = np.asarray(scores.columns, dtype=object)[order[rows, ranks]]
    return pd.DataFrame({"file": idx.get_level_values("file")[rows],
                         "start_s": idx.get_level_values("start_s")[rows].to_numpy(dtype=float),
                         "end_s": idx.get_level_values("end_s")[rows].to_numpy(dtype=float),
                         "label": labels, "score": ranked[rows, ranks]})


def to_raven(detections: pd.DataFrame, freq_range: tuple[float, float] = (0.0, 16000.0),
             offsets: dict[str, float] | None = None) -> pd.DataFrame:
    """Raven Pro selection table (one selection per detection, ``Selection`` numbered from 1).

    Args:
        detections: output of :func:`to_detections`.
        freq_range: ``Low Freq (Hz)`` and ``High Freq (Hz)`` of every selection.
        offsets: for a table spanning several files, each file's start time in the file sequence (the sum
            of the durations before it); adds ``Begin Path`` and ``File Offset (s)`` and shifts the times.
    """
    n = len(detections)
    start = detections["start_s"].to_numpy(dtype=float)
    shift = np.array([offsets[f] for f in detections["file"]], dtype=float) if offsets is not None else 0.0
    out = pd.DataFrame({"Selection": np.arange(1, n + 1), "View": ["Spectrogram 1"] * n, "Channel": np.ones(n, int),
                        "Begin Time (s)": start + shift,
                        "End Time (s)": detections["end_s"].to_numpy(dtype=float) + shift,
                        "Low Freq (Hz)": np.full(n, float(freq_range[0])),
                        "High Freq (Hz)": np.full(n, float(freq_range[1])),
                        "Species": detections["label"].to_numpy(), "Confidence": detections["score"].to_numpy()})
    if offsets is not None:
        out["Begin Path"] = [str(Path(f).resolve()) for f in detections["file"]]
        out["File Offset (s)"] = start
    return out


def to_audacity(detections: pd.DataFrame) -> pd.DataFrame:
    """Audacity label track rows ``start, end, label`` with ``label = "<class> (<score>)"``."""
    return pd.DataFrame({"start": detections["start_s"].to_numpy(dtype=float),
                         "end": detections["end_s"].to_numpy(dtype=float),
                         "label": [f"{c} ({s:.3f})" for c, s in zip(detections["label"], detections["score"])]})


def _write(df: pd.DataFrame, fh: IO[str], header: bool = True, sep: str = ",") -> None:
    """CSV/TSV rows with times as exact decimals and scores with :data:`FLOAT_FORMAT`."""
    df = df.copy()
    for col in ("start_s", "end_s", "Begin Time (s)", "End Time (s)", "File Offset (s)", "start", "end"):
        if col in df.columns:
            df[col] = _fmt_seconds(df[col])
    df.to_csv(fh, sep=sep, index=False, header=header, float_format=FLOAT_FORMAT, lineterminator="\n")


class _Output:
    """One combined output file, filled file by file: ``add(frame, detections, offset)`` then ``close()``."""

    def __init__(self, path: Path, stack: contextlib.ExitStack, binary: bool = False) -> None:
        self.path = path
        self.fh = stack.enter_context(atomic_open(path, "wb" if binary else "w"))
        self.first = True

    def write(self, df: pd.DataFrame, sep: str = ",") -> None:
        _write(df, self.fh, header=self.first, sep=sep)
        self.first = False


# ----------------------------------------------------------------------------- journal
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
        settings, path = root / "run.json", root / "journal.jsonl"
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


# ----------------------------------------------------------------------------- the run
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
                    _write(to_raven(detections, freq_range), fh, sep="\t")
                else:
                    _write(to_audacity(detections), fh, header=False, sep="\t")


def run_prediction(predictor: Predictor, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                   formats: Sequence[str] = ("submission", "table"), table_format: str = "csv",
                   threshold: float = 0.5, top_k: int | None = None, overwrite: bool = False,
                   progress: bool | None = None) -> RunSummary:
    """Score every audio file under ``inputs`` and write the chosen outputs to ``out_dir``; resumable.

    Outputs (``formats``): ``submission`` -> ``submission.csv``; ``table`` -> ``scores.csv`` or
    ``scores.parquet``; ``detections`` -> ``detections.csv``; ``raven`` -> ``raven/<file>.selections.txt``
    per file plus ``raven_selections.txt`` (with ``Begin Path``, ``File Offset (s)``); ``audacity`` ->
    ``audacity/<file>.txt``. ``errors.csv`` (file, reason) is always written. Per-file names are the paths
    relative to the input files' common folder.

    Args:
        predictor: the :class:`~nfaudio.predict.Predictor`.
        inputs: files, folders and manifests (:func:`~nfaudio.predict.list_audio`).
        out_dir: output folder (created).
        formats: any of :data:`FORMATS`.
        table_format: "csv" or "parquet" (needs pyarrow) for the wide table.
        threshold: minimum score of a detection (detections, Raven, Audacity).
        top_k: at most this many detections per window (the best ones).
        overwrite: discard a previous run in ``out_dir`` instead of resuming it.
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        A :class:`RunSummary`.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: unknown format, no audio files, missing parquet engine.
        RunConflictError: ``out_dir`` holds a run with other settings.
    """
    from tqdm.auto import tqdm

    from nfaudio.predict import list_audio

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
    journal = Journal(out_dir / _JOURNAL_DIR, predictor.fingerprint(), overwrite)
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
    try:
        for res in predictor.iter_results(todo):
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
    from nfaudio.predict import FileResult

    classes = predictor.classes
    written: list[Path] = []
    offset = 0.0
    dupes: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        out = {fmt: _Output(out_dir / name, stack) for fmt, name in
               (("submission", "submission.csv"), ("table", "scores.csv"), ("detections", "detections.csv"),
                ("raven", "raven_selections.txt"))
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
            frame = FileResult(f, 0, starts, ends, scores, 0.0).to_frame(classes)
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
            _write_per_file(out_dir, names[key], dets, formats, predictor.freq_range, only_missing=True)
            offset += float(journal.done[key]["duration"])
        for o in out.values():
            if o.first:  # no file scored: still write the header
                o.write(_empty(o.path.name, classes), sep="\t" if o.path.suffix == ".txt" else ",")
        written = [o.path for o in out.values()] + ([parquet.path] if parquet is not None else [])
    err = pd.DataFrame([(str(f), errors[_key(f)]) for f in files if _key(f) in errors], columns=["file", "reason"])
    with atomic_open(out_dir / "errors.csv") as fh:
        _write(err, fh)
    return [*written, out_dir / "errors.csv"]


def _empty(name: str, classes: Sequence[str]) -> pd.DataFrame:
    columns = {"submission.csv": ["row_id", *classes], "scores.csv": ["file", "start_s", "end_s", *classes],
               "detections.csv": ["file", "start_s", "end_s", "label", "score"],
               "raven_selections.txt": [*RAVEN_COLUMNS, "Begin Path", "File Offset (s)"]}[name]
    return pd.DataFrame(columns=columns)


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
