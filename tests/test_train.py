import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_recipe

from nfaudio.data import read_birdclef
from nfaudio.models import load_checkpoint, load_model
from nfaudio.training import build_model, build_optimizer, fit, train_from_config
from nfaudio.training import loggers as train_loggers
from nfaudio.training import state as train_state
from nfaudio.training.build import cosine_lambda, is_normalizer_free


def _split(root):
    m = read_birdclef(root)
    idx = np.arange(len(m))
    return m, m.subset(idx % 3 != 0), m.subset(idx % 3 == 0)


def test_fit_writes_run_directory(tiny_birdclef, tmp_path):
    _, tr, va = _split(tiny_birdclef.root)
    cfg = tiny_recipe(tiny_birdclef.root, augment={"mixup_p": 0.5, "gain_p": 0.5, "specaug_p": 0.5},
                      train={"ema": True, "ema_decay": 0.9})
    result = fit(cfg, tr, va, tmp_path)
    for name in ("config.yaml", "run.json", "best.pt", "last.pt", "history.csv", "curves.png"):
        assert (tmp_path / name).is_file(), name
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2]
    assert np.isfinite(hist[["train_loss", "val_loss", "val_score"]].to_numpy()).all()
    assert result.best_score == pytest.approx(hist["val_score"].max())
    model = load_model(tmp_path / "best.pt")
    out = model.eval()(torch.zeros(2, 16000))
    assert out.clip.shape == (2, 3)
    _, saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["classes"] == list(tr.classes)
    assert saved["duration"] == 1.0
    assert saved["activation"] == "sigmoid"


def test_resumed_run_ends_with_identical_weights(tiny_birdclef, tmp_path, monkeypatch):
    _, tr, va = _split(tiny_birdclef.root)
    cfg = tiny_recipe(tiny_birdclef.root, augment={"mixup_p": 0.5, "gain_p": 0.5},
                      model={"drop_path_rate": 0.1}, train={"epochs": 3})
    fit(cfg, tr, va, tmp_path / "full")

    calls = {"n": 0}
    real_log = train_loggers.HistoryLogger.log

    def interrupt_in_epoch_2(self, row):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # after epoch 1's checkpoint, before epoch 2's
        real_log(self, row)

    monkeypatch.setattr(train_loggers.HistoryLogger, "log", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tr, va, tmp_path / "resumed")
    monkeypatch.setattr(train_loggers.HistoryLogger, "log", real_log)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["epoch"] == 0
    fit(cfg, tr, va, tmp_path / "resumed", resume=True)

    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert pd.read_csv(tmp_path / "resumed" / "history.csv")["epoch"].tolist() == [1, 2, 3]


def test_agc_default_follows_the_backbone(tiny_birdclef):
    cfg = tiny_recipe(tiny_birdclef.root)
    assert is_normalizer_free(build_model(cfg, 3).backbone)
    bn_cfg = tiny_recipe(tiny_birdclef.root, model={"name": "resnet18"})
    assert not is_normalizer_free(build_model(bn_cfg, 3).backbone)


def test_backbone_lr_multiplier_and_no_decay_groups(tiny_birdclef):
    cfg = tiny_recipe(tiny_birdclef.root, optim={"lr": 0.1, "backbone_lr_mult": 0.1, "weight_decay": 1e-4})
    model = build_model(cfg, 3)
    opt = build_optimizer(model, cfg)
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in opt.param_groups:
        in_bb = {id(p) in backbone for p in group["params"]}
        assert len(in_bb) == 1
        assert group["lr"] == pytest.approx(0.01 if in_bb.pop() else 0.1)
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else 1e-4)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_cosine_schedule_values():
    fn = cosine_lambda(total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert fn(0) == pytest.approx(0.5)
    assert fn(1) == pytest.approx(1.0)
    assert fn(2) == pytest.approx(1.0)
    assert fn(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert fn(10) == pytest.approx(0.1)


def test_frozen_backbone_warmup_keeps_backbone_weights(tiny_birdclef, tmp_path):
    _, tr, va = _split(tiny_birdclef.root)
    cfg = tiny_recipe(tiny_birdclef.root, train={"epochs": 1, "freeze_backbone_epochs": 1})
    torch.manual_seed(0)
    fit(cfg, tr, va, tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    train_state.seed_everything(cfg.train.seed)
    init = build_model(cfg, 3).state_dict()
    bb = [k for k in init if k.startswith("backbone.")]
    head = [k for k in init if k.startswith("head.") and init[k].is_floating_point()]
    assert bb
    assert all(torch.equal(init[k], state[k]) for k in bb)
    assert any(not torch.equal(init[k], state[k]) for k in head)


def test_train_from_config_writes_folds(tiny_birdclef, tmp_path):
    cfg = tiny_recipe(tiny_birdclef.root, train={"epochs": 1, "val_fold": 1})
    train_from_config(cfg, tmp_path)
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert set(folds["fold"]) == {0, 1, 2}
    assert len(folds) == 12
    assert pd.read_csv(tmp_path / "history.csv").shape[0] == 1


def test_empty_split_is_an_error(tiny_birdclef, tmp_path):
    m, tr, _ = _split(tiny_birdclef.root)
    with pytest.raises(ValueError, match="empty split"):
        fit(tiny_recipe(tiny_birdclef.root), tr, m.subset(np.zeros(len(m), bool)), tmp_path)


def test_small_balanced_training_set_still_takes_a_step(tiny_birdclef, tmp_path):
    m, _, va = _split(tiny_birdclef.root)
    tr = m.subset(np.arange(3))
    cfg = tiny_recipe(tiny_birdclef.root, train={"epochs": 1, "batch_size": 4, "balanced_alpha": 0.5})
    fit(cfg, tr, va, tmp_path)
    assert pd.read_csv(tmp_path / "history.csv")["train_loss"].iloc[0] > 0


def test_early_stopping_stops_when_the_score_stalls(tiny_birdclef, tmp_path):
    _, tr, va = _split(tiny_birdclef.root)
    cfg = tiny_recipe(tiny_birdclef.root, optim={"lr": 0.0}, train={"epochs": 6, "early_stop_patience": 1})
    result = fit(cfg, tr, va, tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2]  # lr 0: epoch 2 does not improve, patience 1
    assert result.best_epoch == 1


def test_gradient_accumulation_steps_the_scheduler_per_optimizer_step(tiny_birdclef, tmp_path):
    _, tr, va = _split(tiny_birdclef.root)  # 8 training clips, batch 2 -> 4 batches, 2 optimizer steps
    cfg = tiny_recipe(tiny_birdclef.root, train={"epochs": 1, "batch_size": 2, "accum_steps": 2})
    fit(cfg, tr, va, tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 2


def test_min_steps_raises_the_epochs_of_a_small_training_set_and_the_schedule_follows(tiny_birdclef, tmp_path):
    m, _, va = _split(tiny_birdclef.root)
    tr = m.subset(np.arange(7))  # batch 2, the last partial batch dropped: 3 optimizer steps an epoch
    cfg = tiny_recipe(tiny_birdclef.root, train={"epochs": 1, "batch_size": 2, "min_steps": 7})
    result = fit(cfg, tr, va, tmp_path / "small")
    assert len(result.history) == 3  # ceil(7 / 3) epochs
    state = torch.load(tmp_path / "small" / "last.pt", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 9
    s = cfg.schedule  # the cosine planned over the 9 steps taken, so it ends where a 9-step schedule ends
    end = cfg.optim.lr * cosine_lambda(9, int(s.warmup_epochs * 3), s.min_lr_ratio)(9)
    assert result.history[-1]["lr"] == pytest.approx(end)
    big = tiny_recipe(tiny_birdclef.root, train={"epochs": 2, "batch_size": 2, "min_steps": 3})
    assert len(fit(big, tr, va, tmp_path / "enough").history) == 2  # epochs already give >= min_steps


def test_epochs_for_min_steps_floor_by_hand():
    from nfaudio.training.trainer import epochs_for

    assert epochs_for(1, 7, 3) == 3  # ceil(7 / 3)
    assert epochs_for(5, 7, 3) == 5  # the epochs already give 15 steps
    assert epochs_for(2, None, 3) == epochs_for(2, 0, 3) == 2  # no floor
    assert epochs_for(1, 4, 0) == 4  # an empty epoch counts as one step, never a division by zero
    with pytest.raises(ValueError, match=r"train.min_steps must be .* >= 0 \(null: no floor\), got -5"):
        epochs_for(1, -5, 3)


def test_missing_logger_package_is_a_config_error(tiny_birdclef, tmp_path, monkeypatch):
    import builtins

    from nfaudio.config import ConfigError

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    _, tr, va = _split(tiny_birdclef.root)
    with pytest.raises(ConfigError, match="needs the 'tensorboard' package"):
        fit(tiny_recipe(tiny_birdclef.root, train={"tensorboard": True}), tr, va, tmp_path)


def test_select_last_keeps_the_final_epoch(tiny_birdclef, tmp_path):
    _, tr, va = _split(tiny_birdclef.root)
    cfg = tiny_recipe(tiny_birdclef.root, train={"epochs": 3, "select": "last"})
    result = fit(cfg, tr, va, tmp_path)
    _, extra = load_checkpoint(tmp_path / "best.pt")
    assert extra["epoch"] == 3
    assert result.best_epoch == 3
    assert result.best_score == pytest.approx(result.history[-1]["val_score"])
    with pytest.raises(ValueError, match="'train.select' cannot be 'worst'; valid values: best, last"):
        fit(tiny_recipe(tiny_birdclef.root, train={"select": "worst"}), tr, va, tmp_path / "x")


def test_fine_tuning_from_a_local_imagenet_checkpoint_is_a_recipe_setting(tiny_birdclef, tmp_path):
    import timm

    torch.manual_seed(1)
    rgb = timm.create_model("test_nfnet", pretrained=False, num_classes=1000).state_dict()  # 3-channel stem
    weights = tmp_path / "imagenet.pth"
    torch.save(rgb, weights)
    _, tr, va = _split(tiny_birdclef.root)
    cfg = tiny_recipe(tiny_birdclef.root, model={"name": "test_nfnet", "pretrained": str(weights)},
                      optim={"backbone_lr_mult": 0.1}, train={"epochs": 1, "freeze_backbone_epochs": 1})
    fit(cfg, tr, va, tmp_path / "run")
    body = {k.removeprefix("backbone.model."): v
            for k, v in torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"].items()
            if k.startswith("backbone.model.")}
    torch.testing.assert_close(body["stem.conv1.weight"], rgb["stem.conv1.weight"].sum(1, keepdim=True),
                               rtol=0, atol=0)  # summed RGB stem, untouched by the frozen warm-up epoch
    for key, value in body.items():
        if key != "stem.conv1.weight":
            assert torch.equal(value, rgb[key]), key
