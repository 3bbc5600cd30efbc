"""The embedding store: shards written and read back, resume after a kill, errors that name the problem."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyarrow")

from nfaudio.embed.store import StoreConflictError, StoreError, StoreWriter, open_store  # noqa: E402


def _file_windows(rng, n, dim, classes=0):
    start = np.arange(n) * 5.0
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    scores = rng.random((n, classes)).astype(np.float32) if classes else None
    return start, start + 5.0, emb, scores


def test_round_trip_keeps_rows_in_order_with_scores(tmp_path):
    rng = np.random.default_rng(0)
    w = StoreWriter(tmp_path / "s", dim=7, classes=["a", "b", "c"], info={"window": 5.0}, shard_rows=10)
    expect_keys, expect_emb, expect_scores = [], [], []
    for i, n in enumerate([4, 8, 1, 12, 3]):
        start, end, emb, scores = _file_windows(rng, n, 7, 3)
        w.add(f"/x/f{i}.wav", start, end, emb, scores)
        expect_keys.append(pd.DataFrame({"file": f"/x/f{i}.wav", "start_s": start, "end_s": end}))
        expect_emb.append(emb)
        expect_scores.append(scores)
    store = w.close()
    keys = pd.concat(expect_keys, ignore_index=True)
    pd.testing.assert_frame_equal(store.keys(), keys)
    np.testing.assert_array_equal(store.embeddings(), np.concatenate(expect_emb))
    assert store.embeddings().dtype == np.float32
    np.testing.assert_array_equal(store.scores().to_numpy(), np.concatenate(expect_scores))
    assert list(store.scores().index.names) == ["file", "start_s", "end_s"]
    assert store.num_rows == 28
    assert store.dim == 7
    assert store.classes == ["a", "b", "c"]
    assert store.complete
    # files stay whole: 4+8 -> shard 0 (12 rows), 1+12 -> shard 1, 3 -> shard 2
    meta = json.loads((tmp_path / "s" / "embeddings.json").read_text())
    assert [s["rows"] for s in meta["shards"]] == [12, 13, 3]
    assert store.files() == [f"/x/f{i}.wav" for i in range(5)]
    assert open_store(tmp_path / "s").info == {"window": 5.0}


def test_batches_are_bounded_by_a_shard(tmp_path):
    rng = np.random.default_rng(1)
    w = StoreWriter(tmp_path, dim=3, shard_rows=5)
    for i in range(6):
        w.add(f"f{i}", *_file_windows(rng, 5, 3)[:3])
    store = w.close()
    sizes = [len(k) for k, v in store.iter_batches()]
    assert sizes == [5] * 6
    with pytest.raises(StoreError, match="no class scores"):
        next(store.iter_batches(columns=("scores",)))


def test_bad_input_names_the_file(tmp_path):
    rng = np.random.default_rng(2)
    w = StoreWriter(tmp_path, dim=4, classes=["a"])
    start, end, emb, scores = _file_windows(rng, 3, 4, 1)
    with pytest.raises(StoreError, match=r"f\.wav: embeddings of shape \(3, 5\), expected \(windows, 4\)"):
        w.add("f.wav", start, end, np.zeros((3, 5)), scores)
    with pytest.raises(StoreError, match="f.wav: the store needs class scores"):
        w.add("f.wav", start, end, emb)
    with pytest.raises(StoreError, match="2 start"):
        w.add("f.wav", start[:2], end, emb, scores)
    w.add("f.wav", start, end, emb, scores)
    with pytest.raises(StoreError, match="f.wav: already in the store"):
        w.add("f.wav", start, end, emb, scores)
    with pytest.raises(StoreError, match="clash"):
        StoreWriter(tmp_path / "other", dim=4, classes=["file"])
    with pytest.raises(StoreError, match="already holds an embedding store"):
        StoreWriter(tmp_path, dim=4, classes=["a"])
    with pytest.raises(StoreError, match="not an embedding store"):
        open_store(tmp_path / "nowhere")


def test_resume_refuses_other_settings(tmp_path):
    StoreWriter(tmp_path, dim=4, info={"models": ["a.pt"]}).close()
    with pytest.raises(StoreConflictError, match="info"):
        StoreWriter(tmp_path, dim=4, info={"models": ["b.pt"]}, resume=True)
    with pytest.raises(StoreConflictError, match="dim"):
        StoreWriter(tmp_path, dim=5, info={"models": ["a.pt"]}, resume=True)


@pytest.mark.integration
def test_a_writer_killed_mid_run_resumes_to_the_same_store(tmp_path):
    """kill -9 a writing process between shards; reopening keeps the listed shards, drops the rest, and finishing
    the remaining files gives the same rows as an uninterrupted writer."""
    script = textwrap.dedent("""
        import os, signal, sys
        import numpy as np
        from nfaudio.embed.store import StoreWriter
        root, kill_after, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
        w = StoreWriter(root, dim=6, shard_rows=4, resume=resume)
        for i in range(10):
            if f"f{i}" in w.done:
                continue
            rng = np.random.default_rng(i)
            w.add(f"f{i}", np.arange(3) * 5.0, np.arange(3) * 5.0 + 5, rng.standard_normal((3, 6)))
            if i == kill_after:
                # a half-written shard, as a kill during pq.write_table leaves it
                open(os.path.join(root, "shards", "part-99999.parquet.nfaudio-tmp"), "wb").write(b"PAR1")
                os.kill(os.getpid(), signal.SIGKILL)
        w.close()
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = [sys.executable, "-c", script]
    killed = subprocess.run([*run, str(tmp_path / "a"), "6", "0"], env=env)
    assert killed.returncode == -signal.SIGKILL
    partial = open_store(tmp_path / "a")
    assert not partial.complete
    assert partial.files() == [f"f{i}" for i in range(6)]
    subprocess.run([*run, str(tmp_path / "a"), "-1", "1"], env=env, check=True)
    subprocess.run([*run, str(tmp_path / "b"), "-1", "0"], env=env, check=True)
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    assert a.complete
    pd.testing.assert_frame_equal(a.keys(), b.keys())
    np.testing.assert_array_equal(a.embeddings(), b.embeddings())
    assert sorted(p.name for p in (tmp_path / "a" / "shards").iterdir()) == \
        sorted(p.name for p in (tmp_path / "b" / "shards").iterdir())
