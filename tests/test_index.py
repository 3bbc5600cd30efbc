"""The faiss vector index on an embedding store (nfaudio.embed.index): flat ranks equal the exact numpy search, the
query window comes first, approximate kinds against exact, the index file round trip, a stale index refused or
rebuilt, the fallback without faiss, the store's predictor for audio queries, and nfaudio index build / search."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("faiss")

from nfaudio.cli import main  # noqa: E402
from nfaudio.embed import index as ix  # noqa: E402
from nfaudio.embed.search import search, stored_query  # noqa: E402
from nfaudio.embed.store import StoreError, StoreWriter, open_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _store(root: Path, rng: np.random.Generator, files: int = 5, n: int = 40, dim: int = 16):
    """Clustered vectors: 4 centres plus noise, ``files`` files of ``n`` 5-second windows, 3 shards."""
    centres = rng.standard_normal((4, dim))
    w = StoreWriter(root, dim=dim, shard_rows=70)
    for i in range(files):
        start = np.arange(n) * 5.0
        emb = centres[rng.integers(0, 4, n)] + 0.4 * rng.standard_normal((n, dim))
        w.add(f"/x/f{i}.wav", start, start + 5.0, emb.astype(np.float32))
    return w.close()


def _keys(hits: pd.DataFrame) -> list[tuple[str, float]]:
    return list(zip(hits["file"], hits["start_s"]))


# ----------------------------------------------------------------------------------------- the index
def test_flat_index_gives_the_exact_searchs_ranks_and_the_query_window_first(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", np.random.default_rng(0))
    index = ix.build_index(store, "flat")
    assert (tmp_path / "s" / ix.INDEX_FILE).is_file()
    assert len(index) == store.num_rows == 200
    emb = store.embeddings().astype(np.float64)
    for file, start in [("/x/f0.wav", 0.0), ("/x/f2.wav", 35.0), ("/x/f4.wav", 195.0)]:
        q = stored_query(store, file, start)
        hits = index.search(q, top=12)
        ref = search(store, q, top=12)
        assert list(hits.columns) == ["rank", "file", "start_s", "end_s", "distance"]
        assert _keys(hits) == _keys(ref)
        assert hits["rank"].tolist() == list(range(1, 13))
        assert _keys(hits)[0] == (file, start)
        assert hits.loc[0, "distance"] == pytest.approx(0.0, abs=1e-6)
        cos = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q))  # float64 reference
        np.testing.assert_allclose(hits["distance"], np.sort(1.0 - cos)[:12], atol=1e-5)
        np.testing.assert_allclose(hits["end_s"], hits["start_s"] + 5.0)


@pytest.mark.parametrize(("kind", "params"), [("hnsw", {"m": 8, "ef_search": 32}), ("ivf", {"nprobe": 4})])
def test_approximate_kinds_find_the_query_and_most_exact_neighbours(tmp_path: Path, kind: str, params: dict) -> None:
    store = _store(tmp_path / "s", np.random.default_rng(1), files=10, n=60)  # 600 rows: ivf gets 15 cells
    index = ix.build_index(store, kind, **params)
    emb = store.embeddings()
    flat = ix.build_index(store, "flat", save=False)
    queries = emb[::37]
    _, got = index.search_ids(queries, 10)
    _, want = flat.search_ids(queries, 10)
    assert (got[:, 0] == np.arange(0, len(emb), 37)).all()  # each query's own row first
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall >= 0.9, recall
    if kind == "ivf":
        assert index.params == {"nlist": 15, "nprobe": 4}  # min(4 sqrt(600) = 98, 600 // 39 = 15)


def test_the_index_file_reads_back_the_same_index(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", np.random.default_rng(2))
    built = ix.build_index(store, "hnsw", m=12, ef_search=40)
    loaded = ix.open_index(tmp_path / "s")
    assert (loaded.kind, loaded.params, loaded.fingerprint) == ("hnsw", built.params, ix.store_fingerprint(store))
    pd.testing.assert_frame_equal(loaded.keys, store.keys(), check_dtype=False)
    q = stored_query(store, "/x/f3.wav", 10.0)
    pd.testing.assert_frame_equal(loaded.search(q, 7), built.search(q, 7))
    assert not list((tmp_path / "s").glob("*.nfaudio-tmp"))  # written atomically


def test_a_store_changed_after_the_index_was_built_is_refused_or_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = _store(root, np.random.default_rng(3))
    ix.build_index(store, "flat")
    w = StoreWriter(root, dim=16, shard_rows=70, resume=True)  # a resumed nfaudio embed adds a file
    w.add("/x/new.wav", [0.0], [5.0], np.full((1, 16), 0.5, np.float32))
    store = w.close()
    q = stored_query(store, "/x/new.wav", 0.0)
    with pytest.raises(ix.StaleIndexError, match="stale.*200 rows indexed, 201 stored.*nfaudio index build"):
        ix.open_index(root)
    with pytest.raises(ix.StaleIndexError):
        ix.search_store(root, q)  # never a silently wrong answer
    hits = ix.search_store(root, q, top=3, rebuild=True)
    assert _keys(hits)[0] == ("/x/new.wav", 0.0)
    assert len(ix.open_index(root)) == 201  # the rebuilt index was saved
    assert main(["search", str(root), "/x/new.wav", "--stored", "--top", "2"]) == 0  # fresh again


def test_without_an_index_or_faiss_the_search_is_exact_and_errors_name_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = _store(root, np.random.default_rng(4))
    q = stored_query(store, "/x/f1.wav", 20.0)
    pd.testing.assert_frame_equal(ix.search_store(root, q, 5), search(store, q, 5))  # no index: numpy
    with pytest.raises(ix.MissingIndexError, match="nfaudio index build"):
        ix.search_store(root, q, 5, use_index=True)
    ix.build_index(store, "flat")
    pd.testing.assert_frame_equal(ix.search_store(root, q, 5, use_index=False), search(store, q, 5))
    assert ix.try_faiss("nfaudio_no_such_module") is None  # the path taken when faiss is not installed
    with pytest.raises(ImportError, match=r"pip install 'nfaudio\[index\]'"):
        ix.require_faiss("nfaudio_no_such_module")
    with pytest.raises(ValueError, match="kind"):
        ix.build_index(store, "lsh")
    with pytest.raises(ValueError, match="nlist"):
        ix.build_index(store, "ivf", nlist=1000)
    with pytest.raises(ValueError, match="dimensions"):
        ix.open_index(root).search(np.ones(3))
    empty = StoreWriter(tmp_path / "e", dim=4).close()
    with pytest.raises(ValueError, match="no windows"):
        ix.build_index(empty)


def test_an_audio_query_on_a_store_that_records_no_model_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    from conftest import write_tone

    from nfaudio.embed.query import store_predictor

    store = _store(tmp_path / "s", np.random.default_rng(5))  # written by hand: no models in its info
    with pytest.raises(StoreError, match="cannot tell which model"):
        store_predictor(store)
    wav = write_tone(tmp_path / "q.wav", 1.0)
    assert main(["search", str(tmp_path / "s"), str(wav)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("nfaudio search: error: ")
    assert "pass the model" in err[0]


# ----------------------------------------------------------------------------------------- audio queries
@pytest.fixture(scope="module")
def model_store(cv_dir: Path, audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-fold tiny CV run's embeddings of audio_dir, 1 s windows every 0.5 s (6 + 3 + 5 rows)."""
    out = tmp_path_factory.mktemp("store") / "s"
    assert main(["embed", str(cv_dir), str(audio_dir), "--out", str(out), "--workers", "0", "--hop", "0.5",
                 "--no-progress"]) == 0
    return out


@pytest.mark.usefixtures("one_torch_thread")
def test_an_audio_query_embedded_with_the_stores_model_finds_its_own_window(model_store: Path, cv_dir: Path,
                                                                             audio_dir: Path) -> None:
    from nfaudio.embed.query import embed_query, store_predictor

    store = open_store(model_store)
    predictor = store_predictor(store)  # the CV run's folder, from the two fold paths the store recorded
    assert [Path(p).resolve() for p in predictor.sources] == [(cv_dir / f"fold{k}" / "best.pt").resolve()
                                                                for k in (0, 1)]
    assert (predictor.window, predictor.hop) == (1.0, 0.5)
    ix.build_index(store, "flat")
    q = embed_query(predictor, audio_dir / "rec_a.wav", 1.5, 2.5, fold_mode=store.info["fold_mode"])
    hits = ix.search_store(store, q, top=4)
    assert Path(hits.loc[0, "file"]).name == "rec_a.wav"
    assert hits.loc[0, "start_s"] == 1.5
    assert hits.loc[0, "distance"] == pytest.approx(0.0, abs=1e-5)
    assert (np.diff(hits["distance"]) >= 0).all()


@pytest.mark.integration
def test_index_build_and_search_on_the_command_line(model_store: Path, audio_dir: Path, tmp_path: Path,
                                                    capsys) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "nfaudio"]
    done = subprocess.run([*run, "index", "build", str(model_store), "--kind", "hnsw", "--threads", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "hnsw index of 14 windows" in done.stdout
    out = tmp_path / "hits"
    done = subprocess.run([*run, "search", str(model_store), str(audio_dir / "rec_b.flac"), "--start", "0.5",
                           "--top", "5", "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    hits = pd.read_csv(out / "hits.csv")
    assert list(hits.columns) == ["rank", "file", "start_s", "end_s", "distance"]
    assert len(hits) == 5
    assert (Path(hits.loc[0, "file"]).name, hits.loc[0, "start_s"], hits.loc[0, "end_s"]) == ("rec_b.flac", 0.5, 1.5)
    assert hits.loc[0, "distance"] == pytest.approx(0.0, abs=1e-5)
    raven = pd.read_csv(out / "hits.selections.txt", sep="\t")
    assert raven["Selection"].tolist() == [1, 2, 3, 4, 5]
    assert raven["Species"].tolist() == [f"hit{k}" for k in range(1, 6)]
    np.testing.assert_allclose(raven["End Time (s)"] - raven["Begin Time (s)"], hits["end_s"] - hits["start_s"])
    np.testing.assert_allclose(raven["Confidence"], 1.0 - hits["distance"], atol=1e-6)
    # the stored window as the query (no model run): the same hits
    store = open_store(model_store)
    stored = next(f for f in store.files() if Path(f).name == "rec_b.flac")
    assert main(["search", str(model_store), stored, "--stored", "--start", "0.5", "--top", "5",
                 "--out", str(tmp_path / "stored")]) == 0
    again = pd.read_csv(tmp_path / "stored" / "hits.csv")
    assert _keys(again) == _keys(hits)
    np.testing.assert_allclose(again["distance"], hits["distance"], atol=1e-5)
    capsys.readouterr()
    # user errors: one line, exit 2
    assert main(["search", str(model_store), stored, "--stored", "--start", "7.25"]) == 2
    assert capsys.readouterr().err.strip().startswith("nfaudio search: error: ")
    assert main(["index", "build", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "not an embedding store" in err[0]
    assert main(["search", str(model_store), str(tmp_path / "gone.wav")]) == 2
    assert "gone.wav" in capsys.readouterr().err
