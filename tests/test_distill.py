"""Knowledge distillation: the loss against hand computations, the blend, teacher checks, a distilled training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_recipe

from nfaudio.data import read_birdclef
from nfaudio.models import load_model
from nfaudio.training import fit
from nfaudio.training.distill import Distiller, distill_loss, load_teacher


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bce_distillation_loss_by_hand() -> None:
    s = torch.tensor([[2.0, -1.0]])
    q = torch.tensor([[0.7, 0.2]])
    T = 2.0
    expected = 0.0
    for logit, target in zip([2.0, -1.0], [0.7, 0.2]):
        p = _sigmoid(logit / T)
        expected += -(target * math.log(p) + (1 - target) * math.log(1 - p))
    expected = expected / 2 * T**2
    assert float(distill_loss(s, q, "bce", T)[0]) == pytest.approx(expected, rel=1e-6)


def test_kl_distillation_loss_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0, -1.0]])
    q = torch.tensor([[0.5, 0.3, 0.2]])
    T = 1.5
    z = [v / T for v in (1.0, 0.0, -1.0)]
    log_p = [v - math.log(sum(math.exp(u) for u in z)) for v in z]
    expected = sum(qi * (math.log(qi) - lp) for qi, lp in zip([0.5, 0.3, 0.2], log_p)) * T**2
    assert float(distill_loss(s, q, "kl", T)[0]) == pytest.approx(expected, rel=1e-6)
    assert float(distill_loss(torch.log(q) * T, q, "kl", T)[0]) == pytest.approx(0.0, abs=1e-6)  # q itself: 0
    with pytest.raises(ValueError, match="one of"):
        distill_loss(s, q, "mse")
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(s, q, "kl", 0.0)


class _Fixed(torch.nn.Module):
    """A 'teacher' whose clip logits are fixed numbers."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, wave):
        from nfaudio.models.classifier import ModelOutput

        clip = self.logits.expand(len(wave), -1)
        return ModelOutput(clip, clip[:, None, :])


def test_distiller_blends_with_the_mean_of_its_teachers() -> None:
    d = Distiller([_Fixed([0.0, 2.0]), _Fixed([2.0, 0.0])], "bce", temperature=1.0, alpha=0.25)
    q = d.soft_targets(torch.zeros(3, 10))
    expected_q = (torch.sigmoid(torch.tensor([0.0, 2.0])) + torch.sigmoid(torch.tensor([2.0, 0.0]))) / 2
    torch.testing.assert_close(q, expected_q.expand(3, -1))
    s = torch.tensor([[0.5, -0.5], [1.0, 1.0], [0.0, 0.0]])
    hard = torch.tensor(0.8)
    soft = distill_loss(s, q, "bce", 1.0)
    torch.testing.assert_close(d(hard, s, torch.zeros(3, 10)), 0.75 * hard + 0.25 * soft.mean())
    w = torch.tensor([1.0, 0.0, 3.0])
    torch.testing.assert_close(d(hard, s, torch.zeros(3, 10), w), 0.75 * hard + 0.25 * (soft * w).sum() / 4)
    d.train()
    assert not any(m.training for m in d.modules())
    with pytest.raises(ValueError, match="alpha"):
        Distiller([_Fixed([0.0])], alpha=1.5)


def _split(root):
    m = read_birdclef(root)
    idx = np.arange(len(m))
    return m.subset(idx % 3 != 0), m.subset(idx % 3 == 0)


def test_a_student_distilled_from_a_fold_ensemble(tiny_birdclef, tmp_path) -> None:
    tr, va = _split(tiny_birdclef.root)
    for k in (0, 1):  # a two-fold teacher ensemble, pooled head
        fit(tiny_recipe(tiny_birdclef.root, model={"head": "pooled"}, train={"epochs": 1, "seed": k}), tr, va,
            tmp_path / "teacher" / f"fold{k}")
    teachers = load_teacher(tmp_path / "teacher", tr.classes, 16000)
    assert len(teachers) == 2
    assert not any(p.requires_grad for t in teachers for p in t.parameters())
    before = [p.clone() for p in teachers[0].parameters()]
    cfg = tiny_recipe(tiny_birdclef.root, distill={"teacher": str(tmp_path / "teacher"), "alpha": 0.7,
                                                   "temperature": 2.0}, train={"epochs": 1})
    plain = fit(tiny_recipe(tiny_birdclef.root, train={"epochs": 1}), tr, va, tmp_path / "plain")
    student = fit(cfg, tr, va, tmp_path / "student")
    assert student.history[0]["train_loss"] != plain.history[0]["train_loss"]
    assert np.isfinite(pd.read_csv(tmp_path / "student" / "history.csv")["val_loss"]).all()
    assert type(load_model(tmp_path / "student" / "best.pt").head) is not type(teachers[0].head)  # another model
    after = load_teacher(tmp_path / "teacher", tr.classes, 16000)[0]
    for a, b in zip(before, after.parameters()):
        assert torch.equal(a, b)  # the teacher is never trained


def test_teacher_must_fit_the_student(tiny_birdclef, tmp_path) -> None:
    tr, va = _split(tiny_birdclef.root)
    fit(tiny_recipe(tiny_birdclef.root, train={"epochs": 1}), tr, va, tmp_path / "t")
    with pytest.raises(ValueError, match="classes differ"):
        load_teacher(tmp_path / "t", list(reversed(tr.classes)), 16000)
    with pytest.raises(ValueError, match="sample rate 16000 Hz, the student trains at 32000 Hz"):
        load_teacher(tmp_path / "t", tr.classes, 32000)
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "nothing", tr.classes, 16000)
