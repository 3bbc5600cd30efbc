import json

import pandas as pd
import pytest
import torch

from nfaudio.fileio import TMP_SUFFIX, atomic_open, atomic_path, torch_save, write_csv, write_json


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def killed_mid_write():
        with atomic_open(path) as fh:
            fh.write("new, half written")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        killed_mid_write()
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_writers_round_trip_and_create_parents(tmp_path):
    write_json(tmp_path / "a" / "x.json", {"k": [1, 2]})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"k": [1, 2]}
    df = pd.DataFrame({"row_id": ["r1", "r2"], "p": [0.25, 0.5]})
    write_csv(df, tmp_path / "b" / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b" / "t.csv"), df)
    torch_save({"w": torch.arange(3)}, tmp_path / "c" / "m.pt")
    assert torch.equal(torch.load(tmp_path / "c" / "m.pt")["w"], torch.arange(3))
    assert not list(tmp_path.rglob("*" + TMP_SUFFIX))


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "f.bin"
    with atomic_path(target) as tmp:
        assert tmp.name.startswith("f.bin.")
        assert tmp.name.endswith(TMP_SUFFIX)
        tmp.write_bytes(b"123")
        assert not target.exists()
    assert target.read_bytes() == b"123"


def test_concurrent_writers_of_one_file_each_rename_their_own_copy(tmp_path):
    """Two writers of one path interleaved (parallel fold processes writing one --out's config): with a shared
    temporary name the second rename found nothing (FileNotFoundError, a CI failure); now each renames its own."""
    target = tmp_path / "config.yaml"
    with atomic_open(target) as outer:
        outer.write("outer")
        with atomic_open(target) as inner:
            inner.write("inner")
        assert target.read_text() == "inner"
    assert target.read_text() == "outer"  # the last rename wins, whole
    assert list(tmp_path.iterdir()) == [target]
