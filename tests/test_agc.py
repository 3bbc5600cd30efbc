"""Tests for nfaudio.agc: unit-wise adaptive gradient clipping (Brock et al. 2021)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from nfaudio.agc import AGC, adaptive_clip_grad_, agc_parameters


def _np_agc(w: np.ndarray, g: np.ndarray, clip: float, eps: float) -> np.ndarray:
    """Independent numpy reference: one unit per output row (whole vector for 1-D params)."""
    if w.ndim <= 1:
        w2, g2 = w.reshape(1, -1), g.reshape(1, -1)
    else:
        w2, g2 = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)
    max_norm = clip * np.maximum(np.linalg.norm(w2, axis=1), eps)
    g_norm = np.linalg.norm(g2, axis=1)
    scale = np.where(g_norm < max_norm, 1.0, max_norm / np.maximum(g_norm, 1e-6))
    return (g2 * scale[:, None]).reshape(g.shape)


class TinySED(nn.Module):
    """Conv backbone + SED-style head (two 1x1 convs) + a module registered after the head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(1, 4, 3, padding=1)
        self.att = nn.Conv1d(4, num_classes, 1)
        self.cla = nn.Conv1d(4, num_classes, 1)
        self.extra = nn.Linear(num_classes, num_classes)  # registered last: position-based exclusion fails

    def classifier_modules(self) -> list[nn.Module]:
        return [self.att, self.cla]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x).mean(2)  # (B, 4, T)
        att = torch.softmax(self.att(h), dim=-1)  # (B, C, T)
        clip = (att * self.cla(h)).sum(-1)  # (B, C)
        return self.extra(clip)


def _set(p: torch.Tensor, w: list, g: list) -> None:
    with torch.no_grad():
        p.copy_(torch.tensor(w, dtype=torch.float32).reshape(p.shape))
    p.grad = torch.tensor(g, dtype=torch.float32).reshape(p.shape)


def test_hand_computed_conv_and_linear():
    conv = nn.Conv2d(1, 2, kernel_size=(1, 2))  # weight (2, 1, 1, 2): units are the 2 output rows
    lin = nn.Linear(2, 2)
    # clip_factor = 0.1, eps = 1e-3 -> threshold per unit = 0.1 * max(||W_unit||, 1e-3)
    # conv.weight row0 W=[3,4] ||W||=5 -> max 0.5; G=[0.6,0.8] ||G||=1.0 > 0.5 -> G*0.5/1 = [0.3,0.4]
    #             row1 W=[1,0] ||W||=1 -> max 0.1; G=[0.03,0.04] ||G||=0.05 < 0.1 -> unchanged
    _set(conv.weight, [3, 4, 1, 0], [0.6, 0.8, 0.03, 0.04])
    # conv.bias (1-D: one unit) W=[2,0] ||W||=2 -> max 0.2; G=[0,1] ||G||=1 -> G*0.2 = [0, 0.2]
    _set(conv.bias, [2, 0], [0, 1])
    # lin.weight row0 W=[0,0] -> eps floor: max 0.1*1e-3 = 1e-4; G=[1,0] ||G||=1 -> [1e-4, 0]
    #            row1 W=[1,1] ||W||=sqrt2 -> max 0.14142; G=[0.1,0] ||G||=0.1 -> unchanged
    _set(lin.weight, [0, 0, 1, 1], [1, 0, 0.1, 0])
    # lin.bias W=[0.3,0.4] ||W||=0.5 -> max 0.05; G=[0,-0.1] ||G||=0.1 -> G*0.05/0.1 = [0, -0.05]
    _set(lin.bias, [0.3, 0.4], [0, -0.1])

    adaptive_clip_grad_([conv.weight, conv.bias, lin.weight, lin.bias], clip_factor=0.1, eps=1e-3)

    expected = {
        "conv.weight": np.array([0.3, 0.4, 0.03, 0.04]).reshape(2, 1, 1, 2),
        "conv.bias": np.array([0.0, 0.2]),
        "lin.weight": np.array([[1e-4, 0.0], [0.1, 0.0]]),
        "lin.bias": np.array([0.0, -0.05]),
    }
    got = {
        "conv.weight": conv.weight.grad,
        "conv.bias": conv.bias.grad,
        "lin.weight": lin.weight.grad,
        "lin.bias": lin.bias.grad,
    }
    for name, exp in expected.items():
        np.testing.assert_allclose(got[name].numpy(), exp, rtol=1e-6, atol=1e-8, err_msg=name)
    # the unclipped units are bit-identical
    assert conv.weight.grad[1].flatten().tolist() == torch.tensor([0.03, 0.04]).tolist()


def test_matches_numpy_reference_on_random_model():
    torch.manual_seed(0)
    model = TinySED()
    model(torch.randn(2, 1, 5, 7)).pow(2).sum().mul(100.0).backward()
    params = list(model.parameters())
    before = [(p.detach().numpy().copy(), p.grad.numpy().copy()) for p in params]
    adaptive_clip_grad_(params, clip_factor=0.01, eps=1e-3)
    n_changed = 0
    for p, (w, g) in zip(params, before):
        np.testing.assert_allclose(p.grad.numpy(), _np_agc(w, g, 0.01, 1e-3), rtol=1e-5, atol=1e-9)
        n_changed += not np.array_equal(p.grad.numpy(), g)
    assert n_changed > 0  # the test really exercised clipping


def test_under_threshold_bit_identical():
    torch.manual_seed(1)
    lin = nn.Linear(8, 4)
    lin.weight.grad = torch.randn(4, 8) * 1e-6
    lin.bias.grad = torch.randn(4) * 1e-6
    g_w, g_b = lin.weight.grad.clone(), lin.bias.grad.clone()
    adaptive_clip_grad_(lin.parameters(), clip_factor=0.01)
    assert torch.equal(lin.weight.grad, g_w)
    assert torch.equal(lin.bias.grad, g_b)


def test_eps_floor_for_zero_initialised_weights():
    lin = nn.Linear(3, 2)
    nn.init.zeros_(lin.weight)
    lin.weight.grad = torch.ones(2, 3)  # each row ||G|| = sqrt(3)
    adaptive_clip_grad_([lin.weight], clip_factor=0.01, eps=1e-3)
    # clipped row norm = 0.01 * max(0, 1e-3) = 1e-5, direction kept: each entry 1e-5 / sqrt(3)
    np.testing.assert_allclose(lin.weight.grad.norm(dim=1).numpy(), [1e-5, 1e-5], rtol=1e-5)
    np.testing.assert_allclose(lin.weight.grad.numpy(), np.full((2, 3), 1e-5 / np.sqrt(3)), rtol=1e-5)


def test_params_without_grad_are_skipped():
    lin = nn.Linear(2, 2)
    lin.weight.grad = torch.ones(2, 2)
    adaptive_clip_grad_(lin.parameters())
    assert lin.bias.grad is None


def test_classifier_modules_excluded_by_module_not_position():
    model = TinySED()
    params = agc_parameters(model)
    ids = {id(p) for p in params}
    excluded = {id(p) for m in model.classifier_modules() for p in m.parameters()}
    assert ids == {id(p) for p in model.parameters()} - excluded
    # the last two parameters (what timm would skip) are clipped here
    assert id(model.extra.weight) in ids
    assert id(model.extra.bias) in ids
    assert len(params) == 4  # backbone.weight/bias + extra.weight/bias


def test_excluded_parameters_untouched_by_agc_call():
    torch.manual_seed(2)
    model = TinySED()
    model(torch.randn(2, 1, 5, 7)).pow(2).sum().mul(1e3).backward()
    cla_grad = model.cla.weight.grad.clone()
    extra_grad = model.extra.weight.grad.clone()
    agc = AGC.from_model(model, clip_factor=1e-3)
    agc()
    assert torch.equal(model.cla.weight.grad, cla_grad)
    assert not torch.equal(model.extra.weight.grad, extra_grad)


def test_exclude_names_patterns_and_requires_grad():
    model = TinySED()
    model.backbone.bias.requires_grad_(False)
    params = agc_parameters(model, exclude=[], exclude_names=["extra.*"])
    assert [id(p) for p in params] == [id(model.backbone.weight)] + [
        id(p) for p in (*model.att.parameters(), *model.cla.parameters())
    ]
    params = agc_parameters(model, exclude_names=["*.bias"])
    assert {id(p) for p in params} == {id(model.backbone.weight), id(model.extra.weight)}


def test_unmatched_pattern_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="nfaudio.agc"):
        agc_parameters(TinySED(), exclude_names=["head.nope.*"])
    assert "head.nope.*" in caplog.text


def test_without_classifier_modules_raises():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="classifier_modules"):
        agc_parameters(model)
    with pytest.raises(ValueError, match="classifier_modules"):
        AGC.from_model(model)
    assert len(agc_parameters(model, exclude=[model[1]])) == 2
    assert len(agc_parameters(model, exclude=[])) == 4


def test_foreign_exclude_module_raises():
    with pytest.raises(ValueError, match="not a submodule"):
        agc_parameters(TinySED(), exclude=[nn.Linear(3, 3)])


@pytest.mark.parametrize(("clip_factor", "eps"), [(0.0, 1e-3), (-0.1, 1e-3), (0.01, -1.0)])
def test_invalid_hparams_raise(clip_factor, eps):
    with pytest.raises(ValueError, match="clip_factor|eps"):
        AGC([], clip_factor=clip_factor, eps=eps)
    with pytest.raises(ValueError, match="clip_factor|eps"):
        adaptive_clip_grad_([], clip_factor=clip_factor, eps=eps)


def _grads_after(scaled: bool) -> list[torch.Tensor]:
    torch.manual_seed(3)
    model = TinySED()
    x = torch.randn(2, 1, 5, 7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agc = AGC.from_model(model, clip_factor=1e-3)
    loss = model(x).pow(2).sum() * 100.0
    if scaled:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        scaler.scale(loss).backward()
        agc.clip_(scaler, opt)
        with pytest.raises(RuntimeError, match="unscale_"):  # a second unscale is an error (documented)
            scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        agc()
    return [p.grad.clone() for p in model.parameters()]


def test_grad_scaler_unscales_before_clipping():
    scaled, plain = _grads_after(True), _grads_after(False)
    for a, b in zip(scaled, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0.0)


def test_scaler_without_optimizer_raises():
    agc = AGC([], clip_factor=0.01)
    with pytest.raises(ValueError, match="optimizer"):
        agc.clip_(torch.amp.GradScaler("cpu"))


def test_repr_and_debug_log(caplog):
    model = TinySED()
    agc = AGC.from_model(model, clip_factor=0.02, eps=1e-4)
    n = sum(p.numel() for p in (*model.backbone.parameters(), *model.extra.parameters()))
    assert repr(agc) == f"AGC(num_tensors=4, num_elements={n}, clip_factor=0.02, eps=0.0001, norm_type=2.0)"
    for p in agc.params:
        p.grad = torch.full_like(p, 100.0)
    with caplog.at_level(logging.DEBUG, logger="nfaudio.agc"):
        agc()
    assert "4 of 4 parameter tensors have clipped units" in caplog.text
