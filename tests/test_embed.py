"""Tests for embeddings: AudioClassifier.forward_embedding and what the heads compute from it, the ONNX embedding
output on onnxruntime and OpenVINO, Predictor.embed / iter_embeddings, the embedding run (nfaudio.embed.run: store
keys and scores against Predictor.predict, errors.csv, resume, kill -9 of the CLI, CV fold modes) and embed_query."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_tone

from nfaudio.backends import combine_embeddings, embedding_width
from nfaudio.cli import main
from nfaudio.embed import StoreConflictError, open_store
from nfaudio.embed.query import embed_query
from nfaudio.embed.run import run_embedding
from nfaudio.models import create_model
from nfaudio.predict import Predictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
pytest.importorskip("pyarrow")

FRONT = dict(sample_rate=16000, n_fft=512, hop_length=160, n_mels=32, fmin=20.0, fmax=8000.0)


def _model(head: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("nfaudio_tiny", num_classes=4, head=head, frontend=FRONT, **kwargs).eval()


# ----------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize(("head", "kwargs", "width"), [("sed", {}, None), ("sed", {"head_hidden": 24}, 24),
                                                        ("sed", {"head_hidden": 0}, None), ("pooled", {}, None)])
def test_forward_embedding_has_the_heads_width_and_one_pass_gives_the_same_logits(head, kwargs, width) -> None:
    model = _model(head, **kwargs)
    wave = torch.randn(3, 16000) * 0.1
    with torch.no_grad():
        emb = model.forward_embedding(wave)
        both = model.forward_with_embedding(wave)
        out = model(wave)
    assert model.embedding_dim == (width or model.backbone.num_features)
    assert emb.shape == (3, model.embedding_dim)
    torch.testing.assert_close(both.embedding, emb, rtol=0, atol=0)
    torch.testing.assert_close(both.clip, out.clip, rtol=0, atol=0)
    torch.testing.assert_close(both.frame, out.frame, rtol=0, atol=0)


def test_the_pooled_heads_linear_layer_on_the_embedding_is_the_clip_logit() -> None:
    model = _model("pooled", drop_rate=0.5)  # dropout: the identity in eval mode
    wave = torch.randn(3, 16000) * 0.1
    with torch.no_grad():
        emb, clip = model.forward_embedding(wave), model(wave).clip
        features = model.forward_features(wave)
    torch.testing.assert_close(model.head.fc(emb), clip, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb, features.mean(dim=(2, 3)))  # "avg" pooling over frequency and time


def test_the_sed_heads_cla_on_the_embedding_is_the_mean_frame_logit_and_the_clip_logit_under_uniform_attention(
        ) -> None:
    model = _model("sed", drop_rate=0.3)
    wave = torch.randn(3, 16000) * 0.1
    with torch.no_grad():
        emb, out = model.forward_embedding(wave), model(wave)
        cla = model.head.cla(emb[:, :, None])[:, :, 0]  # 1x1 conv on one "frame"
        assert out.frame.shape[1] > 1
        torch.testing.assert_close(cla, out.frame.mean(dim=1), rtol=1e-5, atol=1e-5)
        assert (cla - out.clip).abs().max() > 1e-4  # attention weighs frames unequally: not the clip logit
        model.head.att.weight.zero_()
        model.head.att.bias.zero_()  # uniform attention: the clip logit is the mean frame logit
        torch.testing.assert_close(model.head.cla(emb[:, :, None])[:, :, 0], model(wave).clip, rtol=1e-5, atol=1e-5)


def test_fold_embeddings_are_averaged_or_concatenated() -> None:
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(combine_embeddings([a, b], "mean"), (a + b) / 2)
    np.testing.assert_array_equal(combine_embeddings([a, b], "concat"), np.hstack([a, b]))
    assert embedding_width([3, 5], "concat") == 8
    with pytest.raises(ValueError, match="one embedding width"):
        embedding_width([3, 5], "mean")
    with pytest.raises(ValueError, match="fold_mode must be one of"):
        embedding_width([3], "max")


# ----------------------------------------------------------------------------------------- ONNX backends
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_onnx_embedding_output_matches_torch(backend: str, ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    if backend == "openvino":
        pytest.importorskip("openvino")
    from nfaudio.export import export_onnx, read_onnx_metadata

    path = export_onnx(ckpt, tmp_path / "m.onnx", embedding=True)  # its own parity check covers the embedding too
    torch_pred = Predictor.from_checkpoint(ckpt, num_workers=0)
    assert read_onnx_metadata(path)["embedding_dim"] == torch_pred.models[0].embedding_dim
    waves = np.random.default_rng(0).standard_normal((5, 16000)).astype(np.float32) * 0.1
    ref_emb, ref_probs = torch_pred.scorer.embed(waves)
    other = Predictor.from_checkpoint(path, backend=backend, num_workers=0)
    emb, probs = other.scorer.embed(waves)
    assert other.scorer.embedding_dims == torch_pred.scorer.embedding_dims
    np.testing.assert_allclose(emb, ref_emb, rtol=0, atol=1e-4)
    np.testing.assert_allclose(probs, ref_probs, rtol=0, atol=1e-4)
    converted = Predictor.from_checkpoint(ckpt, backend=backend, num_workers=0)  # a .pt exported on the fly
    np.testing.assert_allclose(converted.scorer.embed(waves)[0], ref_emb, rtol=0, atol=1e-4)


def test_an_onnx_file_without_the_embedding_output_is_refused(exported: Path, audio_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    pred = Predictor.from_checkpoint(exported, backend="onnxruntime", num_workers=0)
    assert pred.scorer.embedding_dims == [0]
    with pytest.raises(ValueError, match="no embedding output; export it again with embedding=True"):
        pred.embed([audio_dir])


# ----------------------------------------------------------------------------------------- predictor and store
def test_store_keys_and_scores_are_the_predictions_and_the_embeddings_predictor_embed(
        ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, hop=0.5, last="shift", num_workers=2, smoothing=0.2)
    table = pred.predict([audio_dir])
    keys, emb = pred.embed([audio_dir])
    pd.testing.assert_frame_equal(keys, table)
    assert emb.shape == (len(table), pred.models[0].embedding_dim)
    assert emb.dtype == np.float32
    by_file = {r.path.name: r for r in pred.iter_embeddings(sorted(audio_dir.rglob("*.wav")))}
    assert by_file["rec_a.wav"].embeddings.shape == (6, emb.shape[1])  # 3.5 s, 1 s windows 0.5 s apart + shifted

    summary = run_embedding(pred, [audio_dir], tmp_path / "store", scores=True, shard_rows=4, progress=False)
    assert (summary.n_files, summary.n_scored, summary.n_failed) == (3, 3, 0)
    store = open_store(tmp_path / "store")
    assert store.complete
    assert store.dim == emb.shape[1]
    assert store.classes == pred.classes
    assert [len(k) for k, _ in store.iter_batches(())] == [6, 3 + 5]  # >= 4 rows a shard, files kept whole
    pd.testing.assert_frame_equal(store.keys(), table.reset_index()[["file", "start_s", "end_s"]])
    pd.testing.assert_frame_equal(store.scores(), table)
    np.testing.assert_array_equal(store.embeddings(), emb)
    assert store.info["fold_mode"] == "mean"
    assert store.info["hop"] == 0.5
    assert store.info["last"] == "shift"
    assert pd.read_csv(tmp_path / "store" / "errors.csv").empty


def test_a_corrupt_file_goes_to_errors_csv_and_is_tried_again(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    write_tone(data / "a.wav", 2.0, seed=0)
    (data / "b.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    write_tone(data / "c.wav", 1.5, seed=1)
    pred = Predictor.from_checkpoint(ckpt, num_workers=1)
    first = run_embedding(pred, [data], tmp_path / "store", progress=False)
    assert (first.n_scored, first.n_failed) == (2, 1)
    errors = pd.read_csv(tmp_path / "store" / "errors.csv")
    assert errors["file"].tolist() == [str(data / "b.wav")]
    assert "not readable as audio" in errors["reason"][0]
    assert open_store(tmp_path / "store").files() == [str(data / "a.wav"), str(data / "c.wav")]
    write_tone(data / "b.wav", 1.0, seed=2)  # repaired: the rerun embeds it (at the end: stores are append-only)
    again = run_embedding(pred, [data], tmp_path / "store", progress=False)
    assert (again.n_resumed, again.n_scored, again.n_failed) == (2, 1, 0)
    assert open_store(tmp_path / "store").num_rows == 2 + 2 + 1
    assert pd.read_csv(tmp_path / "store" / "errors.csv").empty


def test_a_store_cut_short_resumes_to_the_uninterrupted_rows_and_refuses_other_settings(
        ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, num_workers=0)
    run_embedding(pred, [audio_dir], tmp_path / "clean", scores=True, shard_rows=1, progress=False)
    cut = tmp_path / "cut"
    run_embedding(pred, [audio_dir], cut, scores=True, shard_rows=1, progress=False)
    meta = json.loads((cut / "embeddings.json").read_text())
    meta["shards"], meta["complete"] = meta["shards"][:1], False  # as if killed after the first shard was listed
    (cut / "embeddings.json").write_text(json.dumps(meta))
    assert open_store(cut).num_rows == 4
    again = run_embedding(pred, [audio_dir], cut, scores=True, shard_rows=1, progress=False)
    assert (again.n_resumed, again.n_scored) == (1, 2)
    a, b = open_store(cut), open_store(tmp_path / "clean")
    assert a.complete
    assert len(list((cut / "shards").iterdir())) == 3
    pd.testing.assert_frame_equal(a.keys(), b.keys())
    np.testing.assert_array_equal(a.embeddings(), b.embeddings())
    pd.testing.assert_frame_equal(a.scores(), b.scores())
    other = Predictor.from_checkpoint(ckpt, hop=0.5, num_workers=0)
    with pytest.raises(StoreConflictError, match="info differ.*--overwrite"):
        run_embedding(other, [audio_dir], cut, scores=True, progress=False)
    with pytest.raises(StoreConflictError, match="classes"):
        run_embedding(pred, [audio_dir], cut, scores=False, progress=False)
    redo = run_embedding(other, [audio_dir], cut, overwrite=True, progress=False)
    assert redo.n_resumed == 0
    assert open_store(cut).num_rows == 6 + 3 + 5


def test_cv_fold_embeddings_mean_and_concat(cv_dir: Path, audio_dir: Path, tmp_path: Path) -> None:
    ens = Predictor.from_checkpoint(cv_dir, num_workers=0)
    folds = [Predictor.from_checkpoint(cv_dir / f"fold{k}" / "best.pt", num_workers=0).embed([audio_dir])[1]
             for k in (0, 1)]
    d = folds[0].shape[1]
    mean = ens.embed([audio_dir], fold_mode="mean")[1]
    concat = ens.embed([audio_dir], fold_mode="concat")[1]
    assert mean.shape[1] == d
    assert concat.shape[1] == 2 * d
    np.testing.assert_allclose(mean, (folds[0] + folds[1]) / 2, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(concat, np.hstack(folds))
    for mode, width in (("mean", d), ("concat", 2 * d)):
        run_embedding(ens, [audio_dir], tmp_path / mode, fold_mode=mode, progress=False)
        meta = json.loads((tmp_path / mode / "embeddings.json").read_text())
        assert meta["dim"] == width
        assert meta["info"]["fold_mode"] == mode
        assert meta["info"]["model_dims"] == [d, d]


def test_embeddings_need_a_predictor_without_tta(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, hop=0.5, tta_shifts=(-0.25, 0.25), num_workers=0)
    with pytest.raises(ValueError, match="without tta_shifts"):
        pred.embed([audio_dir])
    with pytest.raises(ValueError, match="without tta_shifts"):
        run_embedding(pred, [audio_dir], tmp_path / "s", progress=False)


# ----------------------------------------------------------------------------------------- queries
def test_a_query_window_embeds_to_the_stores_row(ckpt: Path, audio_dir: Path, tmp_path: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, hop=0.75, num_workers=0)  # rec_a: 0, 0.75, 1.5, 2.25, 3.0 (padded)
    run_embedding(pred, [audio_dir], tmp_path / "store", progress=False)
    store = open_store(tmp_path / "store")
    keys, emb = store.keys(), store.embeddings()

    def row(name: str, start: float) -> np.ndarray:
        hit = np.flatnonzero((keys["file"] == str(audio_dir / name)) & np.isclose(keys["start_s"], start))
        assert len(hit) == 1
        return emb[hit[0]]

    np.testing.assert_allclose(embed_query(pred, audio_dir / "rec_a.wav", 1.5, 2.5), row("rec_a.wav", 1.5),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(embed_query(pred, audio_dir / "rec_a.wav", 3.0), row("rec_a.wav", 3.0),
                               rtol=0, atol=1e-5)  # the padded last window, 0.5 s of audio
    np.testing.assert_allclose(embed_query(pred, audio_dir / "sub" / "rec_c.ogg", 0.75, 1.75),
                               row("sub/rec_c.ogg", 0.75), rtol=0, atol=1e-4)  # resampled from 22.05 kHz
    two = embed_query(pred, audio_dir / "rec_a.wav", 0.75, 2.5)  # windows at 0.75 and 1.5
    np.testing.assert_allclose(two, (row("rec_a.wav", 0.75) + row("rec_a.wav", 1.5)) / 2, rtol=0, atol=1e-5)
    assert np.abs(two - row("rec_a.wav", 0.75)).max() > 1e-3
    with pytest.raises(ValueError, match="after the end"):
        embed_query(pred, audio_dir / "rec_a.wav", 10.0)
    with pytest.raises(ValueError, match="start < end"):
        embed_query(pred, audio_dir / "rec_a.wav", 2.0, 1.0)


# ----------------------------------------------------------------------------------------- command line
def test_embed_flags_are_predict_flags_plus_the_stores(ckpt: Path, audio_dir: Path, tmp_path: Path, capsys) -> None:
    import dataclasses
    import inspect

    from test_cli import _dests

    from nfaudio.cli_embed import EMBED_RUN_FLAGS
    from nfaudio.config import PredictConfig

    keys = {f.name for f in dataclasses.fields(PredictConfig)}
    assert _dests("embed") - set(EMBED_RUN_FLAGS) <= keys
    run_keys = {"fold_mode", "scores", "shard_rows", "overwrite"}
    assert run_keys <= set(EMBED_RUN_FLAGS)
    assert run_keys <= set(inspect.signature(run_embedding).parameters)
    assert main(["embed", str(ckpt), str(audio_dir), "--out", str(tmp_path / "s"), "--scores", "--workers", "0",
                 "--hop", "0.5", "--no-progress"]) == 0
    assert "3/3 files embedded" in capsys.readouterr().out
    store = open_store(tmp_path / "s")
    assert store.num_rows == 6 + 3 + 5
    assert store.classes == ["alpha", "beta", "gamma"]
    assert main(["embed", str(ckpt), str(audio_dir), "--out", str(tmp_path / "s"), "--workers", "0"]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.integration
def test_kill_9_of_nfaudio_embed_then_rerun_gives_the_uninterrupted_store(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    for i in range(12):
        write_tone(data / f"rec{i:02d}.wav", 20.0, seed=i % 3)
    args = ["embed", str(ckpt), str(data), "--scores", "--shard-rows", "1", "--batch-size", "1", "--workers", "1",
            "--threads", "1", "--no-progress"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "nfaudio", *args, "--out", str(killed)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def shards() -> int:
        try:
            return len(json.loads((killed / "embeddings.json").read_text())["shards"])
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    deadline = time.monotonic() + 120
    while shards() < 2:
        assert proc.poll() is None, "the run ended before 2 shards were written"
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = shards()
    assert 2 <= n_done < 12, f"kill came too late ({n_done} of 12 files done)"
    assert not open_store(killed).complete
    assert main([*args, "--out", str(killed)]) == 0  # the same command resumes
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    a, b = open_store(killed), open_store(tmp_path / "clean")
    assert a.complete
    assert a.num_rows == b.num_rows == 12 * 20
    pd.testing.assert_frame_equal(a.keys(), b.keys())
    np.testing.assert_array_equal(a.embeddings(), b.embeddings())
    pd.testing.assert_frame_equal(a.scores(), b.scores())
