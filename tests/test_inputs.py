"""Tests for nfaudio.inputs: which audio files a prediction job scores (folders, manifests, files)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nfaudio.inputs import list_audio, read_manifest


def test_list_audio_folders_manifests_and_missing(audio_dir: Path, tmp_path: Path) -> None:
    found = list_audio([audio_dir])
    assert [f.relative_to(audio_dir).as_posix() for f in found] == ["rec_a.wav", "rec_b.flac", "sub/rec_c.ogg"]
    pd.DataFrame({"path": [str(audio_dir / "rec_b.flac"), "x/missing.wav"]}).to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "m.txt").write_text(f"# comment\n{audio_dir / 'rec_a.wav'}\n\n")
    assert list_audio([tmp_path / "m.csv", tmp_path / "m.txt", audio_dir / "rec_a.wav"]) == [
        audio_dir / "rec_b.flac", tmp_path / "x" / "missing.wav", audio_dir / "rec_a.wav"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_audio([tmp_path / "nope"])


def test_read_manifest_resolves_relative_paths_against_its_folder(tmp_path: Path) -> None:
    pd.DataFrame({"filename": ["a.wav", "/abs/b.flac"], "label": ["x", "y"]}).to_csv(tmp_path / "m.csv", index=False)
    assert read_manifest(tmp_path / "m.csv") == [tmp_path / "a.wav", Path("/abs/b.flac")]  # `filename` as `path`
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.txt").write_text("  # comment\nc.ogg\n\n  d.wav  \n")
    assert read_manifest(tmp_path / "sub" / "m.txt") == [tmp_path / "sub" / "c.ogg", tmp_path / "sub" / "d.wav"]
    pd.DataFrame({"file": ["a.wav"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv: manifest needs a 'path' or 'filename' column"):
        read_manifest(tmp_path / "bad.csv")
