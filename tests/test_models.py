"""Tests for nfaudio.models: registry, factory, backbone geometry, heads, pretrained loading, checkpoints."""

from __future__ import annotations

import math
import socket
import time

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import nfaudio.models.pretrained as pretrained_mod
from nfaudio import agc
from nfaudio.frontend import SpecAugment
from nfaudio.models import (
    AudioClassifier,
    ModelConfig,
    ModelOutput,
    PretrainedWeightsError,
    create_model,
    list_models,
    load_model,
    save_model,
)
from nfaudio.models.backbone import _measured_time_reduction
from nfaudio.models.heads import Pool, PooledHead, SEDHead
from nfaudio.models.registry import resolve_config

SR = 16000
FE = dict(sample_rate=SR, n_fft=512, hop_length=160, n_mels=32, fmax=8000.0)  # 1 s -> 101 frames
FAST = {"nfaudio_tiny", "nfaudio_small", "test_nfnet", "nf_regnet_b0"}  # the default run; the rest are slow


def _wave(batch: int = 2, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * SR), generator=g)


def _tiny(**kw) -> AudioClassifier:
    torch.manual_seed(0)
    return create_model("nfaudio_tiny", num_classes=3, frontend=FE, **kw)


def _registry_params() -> list:
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in list_models()]


# ---------------------------------------------------------------- every registered model


@pytest.mark.parametrize("name", _registry_params())
def test_registered_model_contract(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    wave = _wave()
    model = create_model(name, num_classes=4, frontend=FE, spec_augment=None)
    out = model(wave)
    assert isinstance(out, ModelOutput)
    n_frames = model.frontend.n_frames(wave.shape[1])
    assert out.clip.shape == (2, 4)
    assert out.frame.shape == (2, math.ceil(n_frames / model.backbone.time_reduction), 4)
    assert torch.isfinite(out.clip).all()
    assert torch.isfinite(out.frame).all()
    (out.clip.sum() + out.frame.sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        a, b = model(wave), model(wave)
    assert torch.equal(a.clip, b.clip)
    assert torch.equal(a.frame, b.frame)
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    with torch.no_grad():
        c = loaded(wave)
    assert torch.equal(a.clip, c.clip)
    assert torch.equal(a.frame, c.frame)

    pooled = create_model(name, num_classes=4, head="pooled", frontend=FE).eval()
    with torch.no_grad():
        p = pooled(wave)
    assert p.clip.shape == (2, 4)
    assert p.frame.shape == out.frame.shape
    assert torch.isfinite(p.clip).all()
    assert torch.isfinite(p.frame).all()


def test_list_models_holds_every_timm_nfnet_and_the_tiny_variant() -> None:
    names = list_models()
    assert names == sorted(names)
    assert set(timm.list_models(module="nfnet")) <= set(names)
    assert {"nfaudio_tiny", "eca_nfnet_l0", "dm_nfnet_f0", "nf_resnet50", "nf_regnet_b0"} <= set(names)
    assert list_models("eca_nfnet_l*") == ["eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2", "eca_nfnet_l3"]
    assert "resnet50" not in names  # other timm models are accepted, not listed


# ---------------------------------------------------------------- factory and config


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'eca_nfnet_lo'.*did you mean.*eca_nfnet_l0"):
        create_model("eca_nfnet_lo", num_classes=3)


def test_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"'poolng' \(did you mean 'pooling'\?\)"):
        create_model("nfaudio_tiny", num_classes=3, poolng="gem")


@pytest.mark.parametrize(("field", "value"), [("head", "rnn"), ("pooling", "median"), ("num_classes", 0),
                                             ("smoothing", 2), ("drop_rate", 1.0), ("stem_stride", 0)])
def test_config_validation(field: str, value) -> None:
    kw = dict(name="x", backbone="tiny_nfnet", num_classes=3)
    kw[field] = value
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kw)


def test_config_round_trip_and_unknown_key() -> None:
    cfg = resolve_config("nfaudio_tiny", 3, frontend=FE, spec_augment=dict(p=0.5))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="colour"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_variant_dicts_are_merged_and_spec_augment_can_be_disabled() -> None:
    cfg = resolve_config("birdclef_eca_nfnet_l0", 5, frontend=dict(sample_rate=16000, fmax=8000.0))
    assert cfg.frontend == dict(n_mels=128, fmin=50.0, fmax=8000.0, sample_rate=16000)
    assert cfg.backbone == "eca_nfnet_l0"
    assert cfg.drop_path_rate == 0.1
    assert cfg.spec_augment == {}
    assert resolve_config("birdclef_eca_nfnet_l0", 5, spec_augment=None).spec_augment is None
    assert resolve_config("birdclef_eca_nfnet_l0", 5, head="pooled").head == "pooled"


def test_spec_augment_and_drop_path_are_built() -> None:
    model = _tiny(spec_augment=dict(p=1.0), drop_path_rate=0.2)
    assert isinstance(model.spec_augment, SpecAugment)
    drops = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    assert drops
    assert max(drops) == pytest.approx(0.2)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(_wave()).clip, model(_wave()).clip)  # SpecAugment is off in eval


def test_waveform_must_be_2d() -> None:
    with pytest.raises(ValueError, match="batch, samples"):
        _tiny()(torch.zeros(2, 1, SR))


# ---------------------------------------------------------------- backbone geometry


def test_frame_seconds_is_derived_from_the_backbone() -> None:
    model = _tiny()
    assert model.backbone.time_reduction == model.backbone.model.feature_info[-1]["reduction"] == 32
    assert model.frame_seconds == pytest.approx(32 * 160 / SR)
    assert _measured_time_reduction(model.backbone.model, 1) == model.backbone.time_reduction
    wave = _wave(seconds=2.0)
    frames = model(wave).frame.shape[1]
    assert frames == math.ceil(model.frontend.n_frames(wave.shape[1]) / 32)
    assert abs(frames * model.frame_seconds - 2.0) < model.frame_seconds


@pytest.mark.parametrize("name", ["nfaudio_tiny", "test_nfnet"])
def test_stem_stride_one_doubles_the_frames(name: str) -> None:
    wave = _wave(seconds=159 * 160 / SR)  # 160 spectrogram frames: a multiple of the reduction
    base = create_model(name, 3, frontend=FE)
    fine = create_model(name, 3, frontend=FE, stem_stride=1)
    stem = fine.backbone.model.get_submodule(fine.backbone.stem_name)
    assert fine.backbone.stem_name == base.backbone.model.pretrained_cfg["first_conv"]
    assert tuple(stem.stride) == (1, 1)
    assert fine.backbone.time_reduction * 2 == base.backbone.time_reduction
    assert fine.frame_seconds * 2 == pytest.approx(base.frame_seconds)
    with torch.no_grad():
        assert fine.eval()(wave).frame.shape[1] == 2 * base.eval()(wave).frame.shape[1] == 10


def test_channels_last_gives_the_same_outputs() -> None:
    ref = _tiny().eval()
    cl = _tiny(channels_last=True).eval()
    cl.load_state_dict(ref.state_dict())
    wave = _wave()
    with torch.no_grad():
        a, b = ref(wave), cl(wave)
    torch.testing.assert_close(b.clip, a.clip, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.frame, a.frame, rtol=1e-4, atol=1e-5)


def test_batchnorm_timm_backbone_works() -> None:
    model = create_model("resnet18", 3, frontend=FE, head="pooled")
    assert model.backbone.stem_name == "conv1"
    assert model.backbone.time_reduction == 32
    out = model(_wave())
    assert out.clip.shape == (2, 3)
    assert out.frame.shape == (2, 4, 3)
    out.clip.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- heads


def test_sed_clip_logit_is_attention_weighted_frame_logits() -> None:
    torch.manual_seed(0)
    head = SEDHead(8, 3, smoothing=1, hidden=0, att_clamp=2.0).eval()
    x = torch.randn(2, 8, 4, 6)  # (B, C, F', T')
    clip, frame = head(x)
    assert clip.shape == (2, 3)
    assert frame.shape == (2, 6, 3)
    pooled = x.mean(dim=2)  # (B, C, T')
    att = 2.0 * torch.tanh(head.att(pooled) / 2.0)
    ref = (torch.softmax(att, dim=-1) * head.cla(pooled)).sum(-1)
    torch.testing.assert_close(clip, ref)
    torch.testing.assert_close(frame, head.cla(pooled).transpose(1, 2))
    assert (clip >= frame.amin(1) - 1e-6).all()
    assert (clip <= frame.amax(1) + 1e-6).all()


def test_pooled_head_avg_clip_is_mean_of_frame_logits() -> None:
    torch.manual_seed(0)
    head = PooledHead(8, 3, pooling="avg").eval()
    clip, frame = head(torch.randn(2, 8, 4, 6))
    assert frame.shape == (2, 6, 3)
    torch.testing.assert_close(clip, frame.mean(1))  # linear layer commutes with the time mean


def test_pool_modes_against_hand_computation() -> None:
    x = torch.rand(2, 3, 4, 5) + 0.1
    torch.testing.assert_close(Pool("avg")(x, (2, 3)), x.mean((2, 3)))
    torch.testing.assert_close(Pool("max")(x, (2, 3)), x.flatten(2).max(-1).values)
    torch.testing.assert_close(Pool("avgmax")(x, (2,)), 0.5 * (x.mean(2) + x.max(2).values))
    gem = Pool("gem")
    torch.testing.assert_close(gem(x, (2, 3)), (x ** 3).mean((2, 3)) ** (1 / 3))
    gem(x, (2, 3)).sum().backward()
    assert gem.p.grad is not None
    assert gem.p.grad.abs().item() > 0
    with pytest.raises(ValueError, match="pooling"):
        Pool("median")


def test_classifier_modules_and_agc_selection() -> None:
    sed = _tiny()
    assert sed.classifier_modules() == [sed.head.att, sed.head.cla]
    pooled = _tiny(head="pooled", pooling="gem")
    assert pooled.classifier_modules() == [pooled.head.fc]
    for model in (sed, pooled):
        excluded = {id(p) for m in model.classifier_modules() for p in m.parameters()}
        chosen = {id(p) for p in agc.agc_parameters(model)}
        assert chosen == {id(p) for p in model.parameters()} - excluded


def test_reset_classifier_changes_the_number_of_classes() -> None:
    model = _tiny()
    model.reset_classifier(7)
    assert model.config.num_classes == 7
    assert model(_wave()).clip.shape == (2, 7)


# ---------------------------------------------------------------- pretrained weights


def _rgb_test_nfnet() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model("test_nfnet", pretrained=False, num_classes=1000).state_dict()  # 3 channels


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "ckpt_dict"])
def test_pretrained_file_sums_the_rgb_stem(fmt: str, tmp_path) -> None:
    src = _rgb_test_nfnet()
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(src, str(path))
    elif fmt == "pth":
        torch.save(src, path)
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in src.items()}, "epoch": 3}, path)
    model = create_model("test_nfnet", 5, pretrained=path, frontend=FE)
    body = model.backbone.model.state_dict()
    stem = model.backbone.stem_name + ".weight"
    assert stem == "stem.conv1.weight"
    assert body[stem].shape[1] == 1
    torch.testing.assert_close(body[stem], src[stem].sum(dim=1, keepdim=True), rtol=0, atol=0)
    assert set(src) - set(body) == {"head.fc.weight", "head.fc.bias"}
    for key, value in body.items():
        if key != stem:
            assert torch.equal(value, src[key]), key
    assert torch.isfinite(model(_wave()).clip).all()


def test_mismatching_checkpoint_raises_naming_the_keys(tmp_path) -> None:
    src = _rgb_test_nfnet()
    wrong = dict(src)
    wrong["stages.0.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    del wrong["final_conv.weight"]
    torch.save(wrong, tmp_path / "bad.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing: final_conv\.weight.*shape mismatch: "
                                                     r"stages\.0\.0\.conv1\.weight"):
        create_model("test_nfnet", 5, pretrained=tmp_path / "bad.pth", frontend=FE)
    other = timm.create_model("resnet18", num_classes=1000).state_dict()
    torch.save(other, tmp_path / "resnet.pth")
    with pytest.raises(PretrainedWeightsError, match=r"does not fit test_nfnet: missing: .*unexpected: bn1\.bias"):
        create_model("test_nfnet", 5, pretrained=tmp_path / "resnet.pth", frontend=FE)


def test_pretrained_file_errors(tmp_path) -> None:
    with pytest.raises(PretrainedWeightsError, match="not found"):
        create_model("nfaudio_tiny", 3, pretrained=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="cannot read"):
        create_model("nfaudio_tiny", 3, pretrained=tmp_path / "junk.pth")
    ckpt = save_model(_tiny(), tmp_path / "own.pt")
    with pytest.raises(PretrainedWeightsError, match="load_model"):
        create_model("nfaudio_tiny", 3, pretrained=ckpt)


def _no_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(pretrained_mod, "_cached_weights", lambda pcfg, cache_dir=None: None)


def test_pretrained_hub_offline_fails_fast_without_network(monkeypatch) -> None:
    _no_network(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match=r"HF_HUB_OFFLINE.*pretrained='/path/to/weights"):
        create_model("test_nfnet", 3, pretrained=True, frontend=FE)
    assert time.perf_counter() - start < 5.0


def test_pretrained_hub_unreachable_fails_fast(monkeypatch) -> None:
    _no_network(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(address, timeout=None):
        raise OSError("no route to host")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(PretrainedWeightsError, match="cannot reach"):
        create_model("test_nfnet", 3, pretrained=True, frontend=FE)


def test_pretrained_hub_uses_the_local_cache(monkeypatch, tmp_path) -> None:
    src = _rgb_test_nfnet()
    save_file(src, str(tmp_path / "model.safetensors"))
    _no_network(monkeypatch)
    cached = str(tmp_path / "model.safetensors")
    monkeypatch.setattr(pretrained_mod, "_cached_weights", lambda pcfg, cache_dir=None: cached)
    model = create_model("test_nfnet", 3, pretrained=True, frontend=FE)
    stem = model.backbone.model.stem.conv1.weight
    torch.testing.assert_close(stem, src["stem.conv1.weight"].sum(dim=1, keepdim=True))


def test_pretrained_without_published_weights(monkeypatch) -> None:
    _no_network(monkeypatch)
    with pytest.raises(PretrainedWeightsError, match="no ImageNet weights"):
        create_model("nf_resnet26", 3, pretrained=True)
    with pytest.raises(PretrainedWeightsError, match="without ImageNet weights"):
        create_model("nfaudio_tiny", 3, pretrained=True)


# ---------------------------------------------------------------- nfaudio checkpoints


def test_save_load_keeps_config_extras_and_outputs(tmp_path) -> None:
    model = _tiny(head="pooled", pooling="gem", spec_augment=dict(p=0.5), drop_rate=0.1).eval()
    path = save_model(model, tmp_path / "sub" / "best.pt", classes=["a", "b", "c"], score=np.float64(0.5))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["classes"] == ["a", "b", "c"]
    assert ckpt["score"] == 0.5
    assert type(ckpt["score"]) is float
    assert ckpt["config"] == model.config.to_dict()
    assert "nfaudio_version" in ckpt
    loaded = load_model(path)
    assert loaded.config == model.config
    assert not loaded.training
    wave = _wave()
    with torch.no_grad():
        assert torch.equal(loaded(wave).clip, model(wave).clip)
    with pytest.raises(ValueError, match="reserved"):
        save_model(model, tmp_path / "x.pt", config={})
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an nfaudio checkpoint"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
