"""Active learning suggestions from hand-made scores."""

from __future__ import annotations

import pandas as pd
import pytest

from nfaudio.embed.active import suggest, write_suggestions


def _scores():
    idx = pd.MultiIndex.from_tuples([("a.wav", 0.0, 5.0), ("a.wav", 5.0, 10.0), ("b.wav", 0.0, 5.0),
                                     ("b.wav", 5.0, 10.0)], names=["file", "start_s", "end_s"])
    return pd.DataFrame({"x": [0.9, 0.45, 0.1, 0.7], "y": [0.05, 0.99, 0.6, 0.2]}, index=idx)


def test_uncertain_picks_scores_nearest_half():
    # min |p - 0.5| per row: 0.4 (x), 0.05 (x), 0.1 (y), 0.2 (x)
    s = suggest(_scores(), k=3)
    assert list(zip(s["file"], s["start_s"])) == [("a.wav", 5.0), ("b.wav", 0.0), ("b.wav", 5.0)]
    assert s["class"].tolist() == ["x", "y", "x"]
    assert s["score"].tolist() == [0.45, 0.6, 0.7]
    assert (s["label"] == "").all()


def test_top_picks_highest_target_scores():
    s = suggest(_scores(), k=2, strategy="top", target="y")
    assert list(zip(s["file"], s["start_s"])) == [("a.wav", 5.0), ("b.wav", 0.0)]
    assert s["rank"].tolist() == [1, 2]


def test_errors_and_files(tmp_path):
    with pytest.raises(ValueError, match="target"):
        suggest(_scores(), k=2, strategy="top", target="z")
    with pytest.raises(ValueError, match="strategy"):
        suggest(_scores(), k=2, strategy="random")
    csv, raven = write_suggestions(suggest(_scores(), k=4), tmp_path / "s.csv")
    assert len(pd.read_csv(csv)) == 4
    table = pd.read_csv(raven, sep="\t", keep_default_na=False)
    assert (table["Label"] == "").all()
    assert table["Species"].tolist() == ["x", "y", "x", "x"]
