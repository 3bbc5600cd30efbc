"""Vector search on an embedding store: the exact numpy search next to faiss flat, HNSW and IVF indexes.

Writes a store of N synthetic windows (``--rows``, default 100,000; ``--dim`` 256; clustered: ``--clusters``
random centres (unit variance) plus Gaussian noise of ``--noise`` sigma, no audio) with
:class:`nfaudio.embed.store.StoreWriter`, picks ``--queries`` stored windows as queries, then runs each method
in its own child process (so each gets its own peak RSS, ``getrusage`` in the child), one after the other:

- ``numpy``: the exact search of :mod:`nfaudio.embed.search` on the store's embeddings held in memory (build: read
  and L2-normalise them; query: one matrix-vector product and a sort, as ``search()`` does);
- ``flat``, ``hnsw``, ``ivf``: :func:`nfaudio.embed.index.build_index` (reads the shards, builds, writes
  ``index.npz``; what ``nfaudio index build`` costs) and :meth:`VectorIndex.search` per query (the table
  ``nfaudio search`` prints), after :meth:`VectorIndex.load` from the file;
- ``usearch``: the HNSW of the usearch library (a comparison only, not an nfaudio dependency): reads and
  L2-normalises the shards, ``usearch.index.Index(metric="ip", dtype="f32")`` with faiss hnsw's settings
  (connectivity 32, expansion_add 80, expansion_search 64), adds the rows (one thread), saves ``index.usearch``;
  queries (one thread) after ``Index.restore`` from the file, the hits table built from the row keys as
  :meth:`VectorIndex.search` does. Skipped (recorded under ``skipped``) when usearch is not installed.

Query time: mean (and median) milliseconds per single query over the queries, after 5 warm-up queries, for
the rows only and for the hits table (see :func:`child`).
recall@10: the share of the exact top 10 that each method returns, against the numpy search (computed in the
parent when ``numpy`` is not among ``--methods``).
Writes ``benchmarks/results/index.json``.

Usage:
    flock /tmp/nfaudio-heavy.lock nice -n 10 python benchmarks/index.py [--rows 100000] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = ("numpy", "flat", "hnsw", "ivf", "usearch")
HNSW = {"m": 32, "ef_construction": 80, "ef_search": 64}  # faiss hnsw and usearch alike
TOP = 10


def make_store(root: Path, rows: int, dim: int, clusters: int, noise: float, seed: int) -> float:
    """A store of ``rows`` clustered vectors in files of 600 windows (5 s each); returns the writing seconds."""
    from nfaudio.embed.store import StoreWriter

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    t0 = time.perf_counter()
    w = StoreWriter(root, dim=dim, shard_rows=8192, info={"synthetic": {"clusters": clusters, "seed": seed}})
    for i, lo in enumerate(range(0, rows, 600)):
        n = min(600, rows - lo)
        start = np.arange(n) * 5.0
        emb = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
        w.add(f"/archive/rec_{i:05d}.wav", start, start + 5.0, emb)
    w.close()
    return time.perf_counter() - t0


def _time(fn, vectors: np.ndarray) -> tuple[np.ndarray, list]:
    """Milliseconds per call of ``fn`` on each vector (after 5 warm-up calls), and the results."""
    for vec in vectors[:5]:
        fn(vec)
    times, out = [], []
    for vec in vectors:
        t0 = time.perf_counter()
        out.append(fn(vec))
        times.append(time.perf_counter() - t0)
    return 1000 * np.asarray(times), out


def child(method: str, store_dir: Path, queries: np.ndarray, threads: int, ids_out: Path) -> dict:
    """One method: build, then time single queries; the top-10 rows of each query go to ``ids_out``.

    ``query_ms``: the rows only (numpy: product + sort; faiss: ``search_ids``); ``table_ms``: the hits table
    ``nfaudio search`` prints (numpy: ``search.search(store, ...)``, which reads the store's shards on every call,
    timed on 5 queries; faiss: ``VectorIndex.search`` on the loaded index)."""
    from nfaudio.embed import search as exact
    from nfaudio.embed.store import open_store

    store = open_store(store_dir)
    extra: dict = {}
    if method == "numpy":
        t0 = time.perf_counter()
        emb = exact.normalise(store.embeddings())
        build = time.perf_counter() - t0
        vectors = emb[queries]

        def rows(vec: np.ndarray) -> np.ndarray:
            return np.argsort(-(emb @ exact.normalise(vec)), kind="stable")[:TOP]

        table_ms, _ = _time(lambda v: exact.search(store, v, TOP), vectors[:10])
    elif method == "usearch":
        rows, table, build, extra, vectors = _usearch(store, store_dir, threads)
        vectors = vectors[queries]
        table_ms, _ = _time(table, vectors)
    else:
        from nfaudio.embed import index as ix

        params = {"hnsw": HNSW, "ivf": {}, "flat": {}}[method]
        t0 = time.perf_counter()
        ix.build_index(store, method, threads=threads, **params)
        build = time.perf_counter() - t0
        t1 = time.perf_counter()
        index = ix.VectorIndex.load(store_dir / ix.INDEX_FILE)
        extra = {"params": index.params, "load_s": round(time.perf_counter() - t1, 3),
                 "index_file_mib": round((store_dir / ix.INDEX_FILE).stat().st_size / 2**20, 1)}
        vectors = np.concatenate([v["embedding"] for _, v in store.iter_batches()])[queries]

        def rows(vec: np.ndarray) -> np.ndarray:
            return index.search_ids(vec[None], TOP)[1][0]

        table_ms, _ = _time(lambda v: index.search(v, TOP), vectors)
    ms, ids = _time(rows, vectors)
    np.save(ids_out, np.stack([np.pad(i, (0, TOP - len(i)), constant_values=-1) for i in ids]))
    return {"method": method, "build_s": round(build, 3), "query_ms_mean": round(float(ms.mean()), 3),
            "query_ms_median": round(float(np.median(ms)), 3), "table_ms_mean": round(float(table_ms.mean()), 3),
            "table_queries": len(table_ms), **extra}


def _usearch(store, store_dir: Path, threads: int):
    """usearch HNSW: build (read, normalise, add, save), restore; returns (rows, table, build_s, extra, vectors)."""
    import pandas as pd
    import usearch
    from usearch.index import Index

    from nfaudio.embed import search as exact

    t0 = time.perf_counter()
    index = Index(ndim=store.dim, metric="ip", dtype="f32", connectivity=HNSW["m"],
                  expansion_add=HNSW["ef_construction"], expansion_search=HNSW["ef_search"])
    keys, parts, lo = [], [], 0
    for k, v in store.iter_batches():
        emb = np.ascontiguousarray(exact.normalise(v["embedding"]))
        index.add(np.arange(lo, lo + len(emb), dtype=np.uint64), emb, threads=threads)
        lo += len(emb)
        keys.append(k)
        parts.append(v["embedding"])
    path = store_dir / "index.usearch"
    index.save(str(path))
    build = time.perf_counter() - t0
    keys = pd.concat(keys, ignore_index=True)
    del index
    t1 = time.perf_counter()
    index = Index.restore(str(path))
    index.expansion_search = HNSW["ef_search"]
    extra = {"params": {"connectivity": HNSW["m"], "expansion_add": HNSW["ef_construction"],
                        "expansion_search": HNSW["ef_search"], "metric": "ip", "dtype": "f32"},
             "load_s": round(time.perf_counter() - t1, 3),
             "index_file_mib": round(path.stat().st_size / 2**20, 1), "usearch": usearch.__version__}

    def search(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = index.search(exact.normalise(np.asarray(vec, dtype=np.float32)), TOP, threads=threads)
        return m.distances.astype(np.float64), m.keys.astype(np.int64)  # usearch "ip": distance = 1 - dot

    def rows(vec: np.ndarray) -> np.ndarray:
        return search(vec)[1]

    def table(vec: np.ndarray) -> pd.DataFrame:
        dist, found = search(vec)
        k = keys.iloc[found]
        return pd.DataFrame({"rank": np.arange(1, len(found) + 1), "file": k["file"].to_numpy(),
                             "start_s": k["start_s"].to_numpy(dtype=float),
                             "end_s": k["end_s"].to_numpy(dtype=float), "distance": dist})

    return rows, table, build, extra, np.concatenate(parts)


def exact_top(store_dir: Path, rows: np.ndarray) -> np.ndarray:
    """The exact top-10 rows of each query row (the numpy method's ranks), for runs without ``numpy``."""
    from nfaudio.embed import search as exact
    from nfaudio.embed.store import open_store

    emb = exact.normalise(open_store(store_dir).embeddings())
    return np.stack([np.argsort(-(emb @ emb[r]), kind="stable")[:TOP] for r in rows])


def available(method: str) -> bool:
    """Whether a method's library can be imported (usearch is optional; the others fail loudly in the child)."""
    if method != "usearch":
        return True
    import importlib.util

    return importlib.util.find_spec("usearch") is not None


def run_child(method: str, store_dir: Path, queries_path: Path, threads: int, work: Path) -> dict:
    ids_out = work / f"ids_{method}.npy"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--store", str(store_dir),
           "--query-rows", str(queries_path), "--threads", str(threads), "--ids", str(ids_out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{method}: {err.strip().splitlines()[-1] if err.strip() else 'failed'}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_s"] = round(wall, 2)
    result["ids"] = str(ids_out)
    return result


def machine_info() -> dict:
    return {**machine.machine_info("numpy", "faiss", "usearch"), "note": "the 2-core CPU dev machine (shared)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--noise", type=float, default=2.0,
                   help="noise sigma per dimension of unit-variance centres (2.0; at 0.5 every method has recall 1)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="faiss, usearch and BLAS threads per child (1)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="folder for the store (default: a temporary one)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "index.json")
    p.add_argument("--note", default="")
    # a child process (one method)
    p.add_argument("--child", choices=METHODS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--store", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--query-rows", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ids", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import resource

        res = child(args.child, args.store, np.load(args.query_rows), args.threads, args.ids)
        res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(res))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    started, load0 = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        store_dir = work / "store"
        write_s = make_store(store_dir, args.rows, args.dim, args.clusters, args.noise, args.seed)
        rows = np.random.default_rng(args.seed + 1).choice(args.rows, size=args.queries, replace=False)
        np.save(work / "queries.npy", rows)
        skipped = {m: "usearch not installed" for m in methods if not available(m)}
        results = {m: run_child(m, store_dir, work / "queries.npy", args.threads, work)
                   for m in methods if m not in skipped}
        ref = np.load(results["numpy"]["ids"]) if "numpy" in results else exact_top(store_dir, rows)
        for r in results.values():
            ids = np.load(r.pop("ids"))
            r["self_first"] = float(np.mean(ids[:, 0] == rows))  # the query window itself ranks first
            if ref is not None:
                r["recall_at_10"] = round(float(np.mean([len(set(a) & set(b)) / TOP for a, b in zip(ids, ref)])), 4)
        store_mib = sum(f.stat().st_size for f in store_dir.rglob("*.parquet")) / 2**20
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "date": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(), "note": args.note,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("child", "store", "query_rows", "ids")},
        "data": {"rows": args.rows, "dim": args.dim, "clusters": args.clusters, "noise_sigma": args.noise,
                 "store_write_s": round(write_s, 2), "store_mib": round(store_mib, 1)},
        "metric": "cosine; distance = 1 - cosine", "top": TOP, "methods": results,
        "skipped": skipped,
        "loadavg_at_start": load0, "loadavg_at_end": os.getloadavg(), "seconds": round(time.time() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for m, why in skipped.items():
        print(f"{m:7s} skipped: {why}")
    for m, r in results.items():
        print(f"{m:7s} build {r['build_s']:8.2f} s  query {r['query_ms_mean']:8.3f} ms  "
              f"table {r['table_ms_mean']:8.3f} ms  "
              f"recall@10 {r.get('recall_at_10', float('nan')):.3f}  peak RSS {r['peak_rss_mib']:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
