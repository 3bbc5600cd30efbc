"""Thread policy, torch thread scoping, eval-mode restoring and device comparison in nfaudio.runtime."""

import os

import pytest
import torch
from torch import nn

from nfaudio import runtime
from nfaudio.runtime import eval_mode, inference_threads, intra_op_threads, same_device, torch_threads, usable_cores


@pytest.fixture
def four_cores(monkeypatch):
    """Pretend this process may run on 4 cores (of a larger machine)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)


def test_usable_cores_follows_affinity_not_cpu_count(four_cores):
    assert usable_cores() == 4


def test_usable_cores_falls_back_to_cpu_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cores() == 1


@pytest.mark.parametrize(("workers", "expected"), [(0, 4), (1, 3), (3, 1), (4, 1), (16, 1)])
def test_default_threads_are_cores_minus_workers_at_least_one(four_cores, workers, expected):
    assert intra_op_threads(workers=workers) == expected


def test_explicit_threads_win(four_cores):
    assert intra_op_threads(7) == 7
    assert intra_op_threads(1, workers=16) == 1
    assert intra_op_threads(2, workers=0) == 2


def test_inference_threads_are_every_usable_core_unless_given(four_cores):
    assert inference_threads() == 4
    assert inference_threads(1) == 1
    with pytest.raises(ValueError, match="0"):
        inference_threads(0)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_a_predictor_gives_the_model_every_core_beside_its_decode_workers(four_cores, workers):
    """Prediction's decode workers do not take a core from the model (training's DataLoader workers do)."""
    from conftest import CLASSES, FRONTEND, recipe_model

    from nfaudio.predict import Predictor

    model = recipe_model(len(CLASSES), FRONTEND, seed=0)
    assert Predictor(model, CLASSES, window=1.0, num_workers=workers).threads == 4
    assert Predictor(model, CLASSES, window=1.0, num_workers=workers, threads=2).threads == 2
    assert intra_op_threads(workers=workers) == 4 - workers  # the training rule is unchanged


@pytest.mark.parametrize("bad", [0, -3])
def test_invalid_threads_raise_naming_the_value(bad):
    with pytest.raises(ValueError, match=str(bad)):
        intra_op_threads(bad)
    with pytest.raises(ValueError, match=str(bad)), torch_threads(bad):
        pass


def test_negative_workers_raise():
    with pytest.raises(ValueError, match="-1"):
        intra_op_threads(workers=-1)


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    inside = 1 if before != 1 else 2
    interop = torch.get_num_interop_threads()
    with torch_threads(inside):
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == before
    assert torch.get_num_interop_threads() == interop


def test_torch_threads_restores_after_an_exception():
    before = torch.get_num_threads()
    inside = 1 if before != 1 else 2
    seen = []

    def fail_inside() -> None:
        with torch_threads(inside):
            seen.append(torch.get_num_threads())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen == [inside]
    assert torch.get_num_threads() == before


def test_eval_mode_restores_each_submodule_mode():
    frozen = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    model = nn.Sequential(frozen, nn.Dropout(0.5), nn.Linear(3, 2)).train()
    frozen.eval()  # deliberately in eval inside a model in training mode
    before = {name: m.training for name, m in model.named_modules()}
    assert before == {"": True, "0": False, "0.0": False, "0.1": False, "1": True, "2": True}
    x = torch.ones(4, 3)
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
        torch.testing.assert_close(model(x), model(x))  # dropout off: deterministic
    assert {name: m.training for name, m in model.named_modules()} == before


def test_eval_mode_restores_after_an_exception():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert all(m.training for m in model.modules())


def test_same_device_cpu():
    assert same_device(torch.device("cpu"), torch.device("cpu"))
    assert same_device(torch.device("cpu"), torch.device("cpu", 0))
    assert not same_device(torch.device("cpu"), torch.device("meta"))


def test_public_names():
    for name in ("usable_cores", "inference_threads", "intra_op_threads", "torch_threads", "eval_mode", "same_device"):
        assert name in runtime.__all__
