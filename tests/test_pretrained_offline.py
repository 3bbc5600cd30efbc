"""ImageNet weights offline (``pretrained=True`` with no network): a pre-populated Hugging Face cache in the hub's
own layout (read by huggingface_hub and loaded by timm's own loader), a folder of weight files named by model, the
one-line error naming every place looked in, and a recipe that trains from a weights folder."""

import socket
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import tiny_recipe
from safetensors.torch import save_file

from nfaudio.config import load_config
from nfaudio.data import read_birdclef
from nfaudio.models import PretrainedWeightsError, create_model
from nfaudio.training import build_model, fit

FE = dict(sample_rate=16000, n_fft=512, hop_length=160, n_mels=32, fmax=8000.0)
REPO = "timm/test_nfnet.r160_in1k"  # timm's pretrained_cfg["hf_hub_id"] of test_nfnet (its default tag)
SHA = "0123456789abcdef0123456789abcdef01234567"
STEM = "stem.conv1.weight"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, no cache or weights folder from the environment, and any socket connection fails."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HF_HOME", "NFAUDIO_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)


def _imagenet_weights() -> dict[str, torch.Tensor]:
    """A randomly initialised 3-channel test_nfnet with its 1000-class classifier, as timm publishes it."""
    torch.manual_seed(7)
    return timm.create_model("test_nfnet", pretrained=False, num_classes=1000).state_dict()


def _hub_cache(root: Path, src: dict[str, torch.Tensor]) -> Path:
    """``src`` as model.safetensors in huggingface_hub's cache layout under ``root``."""
    repo = root / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    save_file(src, str(snapshot / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return root


def _assert_imagenet_weights(model, src: dict[str, torch.Tensor]) -> None:
    body = model.backbone.model.state_dict()
    assert body[STEM].shape[1] == 1
    torch.testing.assert_close(body[STEM], src[STEM].sum(dim=1, keepdim=True), rtol=0, atol=0)
    assert set(src) - set(body) == {"head.fc.weight", "head.fc.bias"}  # the ImageNet classifier, dropped
    for key, value in body.items():
        if key != STEM:
            assert torch.equal(value, src[key]), key


@pytest.mark.parametrize("how", ["HF_HUB_CACHE", "HF_HOME", "argument"])
def test_hub_cache_in_the_hubs_layout_loads_offline(how, tmp_path, monkeypatch):
    src = _imagenet_weights()
    kwargs = {}
    if how == "HF_HOME":
        _hub_cache(tmp_path / "hf" / "hub", src)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    else:
        cache = _hub_cache(tmp_path / "cache", src)
        if how == "HF_HUB_CACHE":
            monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        else:
            kwargs["weights_cache"] = cache
    model = create_model("test_nfnet", 3, pretrained=True, frontend=FE, **kwargs)
    _assert_imagenet_weights(model, src)
    assert torch.isfinite(model(torch.randn(2, 16000)).clip).all()


@pytest.mark.parametrize("filename", ["test_nfnet.safetensors", "test_nfnet.r160_in1k.pth",
                                      "test_nfnet/model.safetensors"])
def test_weights_folder_named_by_model(filename, tmp_path, monkeypatch):
    src = _imagenet_weights()
    path = tmp_path / "weights" / filename
    path.parent.mkdir(parents=True)
    if path.suffix == ".safetensors":
        save_file(src, str(path))
    else:
        torch.save(src, path)
    _assert_imagenet_weights(create_model("test_nfnet", 3, pretrained=True, frontend=FE,
                                          weights_dir=tmp_path / "weights"), src)
    monkeypatch.setenv("NFAUDIO_WEIGHTS_DIR", str(tmp_path / "weights"))
    _assert_imagenet_weights(create_model("test_nfnet", 3, pretrained=True, frontend=FE), src)


def test_weights_folder_comes_before_the_cache_and_serves_local_backbones(tmp_path):
    src, other = _imagenet_weights(), {k: v + 1 for k, v in _imagenet_weights().items()}
    cache = _hub_cache(tmp_path / "cache", other)
    (tmp_path / "weights").mkdir()
    save_file(src, str(tmp_path / "weights" / "test_nfnet.safetensors"))
    model = create_model("test_nfnet", 3, pretrained=True, frontend=FE, weights_dir=tmp_path / "weights",
                         weights_cache=cache)
    _assert_imagenet_weights(model, src)
    torch.manual_seed(3)
    own = timm.create_model("nf_regnet_b0", pretrained=False, num_classes=0).state_dict()  # any mismatching file
    torch.save(own, tmp_path / "weights" / "tiny_nfnet.pth")
    with pytest.raises(PretrainedWeightsError, match=r"tiny_nfnet\.pth does not fit"):
        create_model("nfaudio_tiny", 3, pretrained=True, weights_dir=tmp_path / "weights")
    torch.manual_seed(4)
    tiny = create_model("nfaudio_tiny", 3).backbone.model.state_dict()
    torch.save(tiny, tmp_path / "weights" / "tiny_nfnet.pth")
    loaded = create_model("nfaudio_tiny", 3, pretrained=True, weights_dir=tmp_path / "weights")
    for key, value in loaded.backbone.model.state_dict().items():
        assert torch.equal(value, tiny[key]), key


def test_nothing_found_is_one_line_naming_every_place_looked_in(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "cache").mkdir()
    with pytest.raises(PretrainedWeightsError) as err:
        create_model("test_nfnet", 3, pretrained=True, frontend=FE, weights_dir=tmp_path / "weights",
                     weights_cache=tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message
    assert f"weights folder {tmp_path / 'weights'} has no test_nfnet|test_nfnet.r160_in1k" in message
    assert f"Hugging Face cache {tmp_path / 'cache'} has no {REPO}" in message
    assert "HF_HUB_OFFLINE" in message
    with pytest.raises(PretrainedWeightsError, match="weights folder not found: .*nope"):
        create_model("test_nfnet", 3, pretrained=True, frontend=FE, weights_dir=tmp_path / "nope")
    with pytest.raises(PretrainedWeightsError, match=r"without ImageNet weights; weights folder .* has no tiny_nfnet"):
        create_model("nfaudio_tiny", 3, pretrained=True, weights_dir=tmp_path / "weights")


@pytest.mark.integration
def test_recipe_with_pretrained_and_a_weights_folder_trains(tiny_birdclef, tmp_path):
    src = _imagenet_weights()
    (tmp_path / "recipe" / "weights").mkdir(parents=True)
    save_file(src, str(tmp_path / "recipe" / "weights" / "test_nfnet.safetensors"))
    values = tiny_recipe(tiny_birdclef.root).to_dict()
    values["model"].update(name="test_nfnet", pretrained=True, weights_dir="./weights", weights_cache="../cache")
    values["train"].update(epochs=1, max_steps_per_epoch=1)
    recipe = tmp_path / "recipe" / "r.yaml"
    recipe.write_text(yaml.safe_dump(values))
    cfg = load_config(recipe)
    assert cfg.model.weights_dir == str(tmp_path / "recipe" / "weights")  # recipe-relative, like other path keys
    assert cfg.model.weights_cache == str(tmp_path / "cache")
    _assert_imagenet_weights(build_model(cfg, 3), src)
    m = read_birdclef(tiny_birdclef.root)
    idx = np.arange(len(m))
    result = fit(cfg, m.subset(idx % 3 != 0), m.subset(idx % 3 == 0), tmp_path / "run")
    assert result.history[0]["epoch"] == 1
    assert np.isfinite(result.history[0]["train_loss"])
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    start = src[STEM].sum(dim=1, keepdim=True)
    assert trained["backbone.model." + STEM].shape == start.shape
    assert not torch.equal(trained["backbone.model." + STEM], start)  # one SGD step moved the loaded stem
