"""``nfaudio index build`` and ``nfaudio search`` (parsers and handlers; :mod:`nfaudio.cli` adds them)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type names only: the parser imports nothing heavy
    import numpy as np

    from nfaudio.embed.store import EmbeddingStore

__all__ = ["COMMANDS", "add_parsers"]

log = logging.getLogger("nfaudio")

KINDS = ("flat", "hnsw", "ivf")  # nfaudio.embed.index.INDEX_KINDS (not imported: the parser loads nothing)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the commands to ``nfaudio``'s subparsers."""
    p = sub.add_parser("index", help="a vector index (faiss) on an embedding store, for nfaudio search",
                       description="Build DIR/index.npz: a faiss index of the store's L2-normalised embeddings "
                                   "(cosine), with the row keys and the store's fingerprint (a store changed "
                                   "afterwards makes the index stale). Needs pip install 'nfaudio[index]'.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="build (or replace) the store's index")
    b.add_argument("store", type=Path, metavar="DIR", help="the embedding store (nfaudio embed --out DIR)")
    b.add_argument("--kind", choices=KINDS, default="flat",
                   help="flat: exact (default); hnsw or ivf: approximate, faster on big stores")
    b.add_argument("--m", type=int, default=32, help="hnsw: links per node (32)")
    b.add_argument("--ef-construction", type=int, default=80, help="hnsw: build-time candidate list (80)")
    b.add_argument("--ef-search", type=int, default=64, help="hnsw: query-time candidate list (64; recall vs speed)")
    b.add_argument("--nlist", type=int, default=None, help="ivf: k-means cells (4 sqrt(rows), at most rows / 39)")
    b.add_argument("--nprobe", type=int, default=None, help="ivf: cells searched per query (nlist / 16)")
    b.add_argument("--threads", type=int, default=None, help="faiss threads (default: the usable cores)")

    p = sub.add_parser("search", help="the windows of an embedding store nearest to a query (cosine)",
                       description="Embed [--start, --end) of QUERY with the model that made the store (or take a "
                                   "stored window, --stored) and list the --top nearest windows: rank, file, start_s, "
                                   "end_s, distance (1 - cosine). Uses DIR/index.npz when built (nfaudio index "
                                   "build) and faiss is installed, else the exact numpy search. --out writes "
                                   "hits.csv and hits.selections.txt (a Raven table).")
    p.add_argument("store", type=Path, metavar="DIR", help="the embedding store")
    p.add_argument("query", type=Path, metavar="QUERY", help="audio file holding the query (a stored file: --stored)")
    p.add_argument("--start", type=float, default=None, help="query start, seconds (0)")
    p.add_argument("--end", type=float, default=None, help="query end, seconds (start + the store's window)")
    p.add_argument("--top", type=int, default=10, help="hits to return (10)")
    p.add_argument("--out", "-o", type=Path, default=None, help="folder for hits.csv and hits.selections.txt")
    p.add_argument("--stored", action="store_true",
                   help="the query is the stored window of QUERY starting at --start (no model is run)")
    p.add_argument("--model", type=Path, default=None,
                   help="the store's model at another path (default: the models the store recorded)")
    p.add_argument("--device", default=None, help="device for the query's embedding (auto)")
    p.add_argument("--exact", action="store_true", help="exact numpy search even when an index is built")
    p.add_argument("--rebuild", action="store_true", help="rebuild a stale index instead of refusing it")


def _cmd_index(args: argparse.Namespace) -> int:
    from nfaudio.embed.index import build_index

    try:  # faiss missing: one line naming the extra
        index = build_index(args.store, args.kind, m=args.m, ef_construction=args.ef_construction,
                            ef_search=args.ef_search, nlist=args.nlist, nprobe=args.nprobe, threads=args.threads)
    except ImportError as err:
        raise ValueError(str(err)) from err
    print(f"{args.store / 'index.npz'}: {index.kind} index of {len(index)} windows x {index.dim} "
          f"({index.build_seconds:.2f} s)")
    return 0


def _stored(store: EmbeddingStore, query: Path, start: float) -> np.ndarray:
    """The stored vector of ``query``'s window at ``start``: the file as given, or as an absolute path."""
    from nfaudio.embed.search import stored_query
    from nfaudio.embed.store import StoreError

    names = list(dict.fromkeys([str(query), os.path.abspath(query), os.path.realpath(query)]))
    for name in names[:-1]:
        try:
            return stored_query(store, name, start)
        except StoreError:
            continue
    return stored_query(store, names[-1], start)


def _cmd_search(args: argparse.Namespace) -> int:
    from nfaudio.embed.index import search_store
    from nfaudio.embed.search import write_hits
    from nfaudio.embed.store import open_store

    store = open_store(args.store)
    if args.stored:
        if args.end is not None:
            raise ValueError("--stored takes the window starting at --start; --end does not apply")
        vector = _stored(store, args.query, args.start or 0.0)
    else:
        if not args.query.is_file():
            raise FileNotFoundError(f"QUERY {args.query}: no such file")
        from nfaudio.embed.query import embed_query, store_predictor

        try:  # a missing optional runtime (onnxruntime, openvino) is a one-line error
            predictor = store_predictor(store, args.model, **({"device": args.device} if args.device else {}))
        except ImportError as err:
            raise ValueError(str(err)) from err
        vector = embed_query(predictor, args.query, args.start, args.end,
                             fold_mode=store.info.get("fold_mode", "mean"))
    hits = search_store(store, vector, args.top, use_index=False if args.exact else None, rebuild=args.rebuild)
    print(hits.to_string(index=False))
    if args.out is not None:
        for path in write_hits(hits, args.out):
            log.info("wrote %s", path)
    return 0


COMMANDS = {"index": _cmd_index, "search": _cmd_search}
