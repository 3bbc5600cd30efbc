"""Exact cosine search on an embedding store: the query window itself comes first, ranks against numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyarrow")

from nfaudio.embed.search import search, stored_query, write_hits  # noqa: E402
from nfaudio.embed.store import StoreError, StoreWriter  # noqa: E402


def _store(tmp_path, rng, files=4, n=30, dim=16):
    centres = rng.standard_normal((3, dim))
    w = StoreWriter(tmp_path / "s", dim=dim, shard_rows=40)
    for i in range(files):
        start = np.arange(n) * 5.0
        emb = centres[rng.integers(0, 3, n)] + 0.3 * rng.standard_normal((n, dim))
        w.add(f"/x/f{i}.wav", start, start + 5.0, emb.astype(np.float32))
    return w.close()


def test_search_returns_the_query_window_first_and_matches_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    store = _store(tmp_path, rng)
    q = stored_query(store, "/x/f2.wav", 35.0)
    hits = search(store, q, top=7)
    assert hits.loc[0, ["file", "start_s", "end_s"]].tolist() == ["/x/f2.wav", 35.0, 40.0]
    assert hits.loc[0, "distance"] == pytest.approx(0.0, abs=1e-6)
    emb = store.embeddings().astype(np.float64)
    cos = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q))
    ref = np.sort(1.0 - cos)[:7]
    np.testing.assert_allclose(hits["distance"].to_numpy(), ref, atol=1e-5)
    assert hits["rank"].tolist() == list(range(1, 8))


def test_write_hits_writes_csv_and_raven(tmp_path):
    rng = np.random.default_rng(1)
    store = _store(tmp_path, rng)
    hits = search(store, stored_query(store, "/x/f0.wav", 0.0), top=5)
    csv, raven = write_hits(hits, tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_csv(csv), hits, check_dtype=False)
    table = pd.read_csv(raven, sep="\t")
    assert table["Selection"].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(table["Begin Time (s)"], hits["start_s"])


def test_errors_name_the_problem(tmp_path):
    store = _store(tmp_path, np.random.default_rng(2))
    with pytest.raises(StoreError, match="f9.wav"):
        stored_query(store, "/x/f9.wav", 0.0)
    with pytest.raises(ValueError, match="dimensions"):
        search(store, np.ones(3))
    with pytest.raises(ValueError, match="top"):
        search(store, np.ones(16), top=0)
