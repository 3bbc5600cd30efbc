import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfaudio.training.losses import ClipFrameLoss, focal_bce_with_logits


def test_bce_clip_plus_max_frame_matches_hand_computation():
    clip = torch.tensor([[0.5, -1.0]])
    frame = torch.tensor([[[0.0, 2.0], [1.0, -3.0]]])  # (B=1, F=2, C=2): max over frames = [1.0, 2.0]
    target = torch.tensor([[1.0, 0.0]])

    def bce(x, y):
        return -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-x))))

    expected = bce(np.array([0.5, -1.0]), np.array([1, 0])).mean() + 0.5 * bce(np.array([1.0, 2.0]),
                                                                               np.array([1, 0])).mean()
    loss = ClipFrameLoss("bce", frame_weight=0.5)(clip, frame, target)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_weights_give_weighted_mean():
    clip = torch.randn(3, 4)
    frame = torch.randn(3, 5, 4)
    target = torch.rand(3, 4)
    fn = ClipFrameLoss("bce", frame_weight=0.0)
    per = F.binary_cross_entropy_with_logits(clip, target, reduction="none").mean(1)
    w = torch.tensor([1.0, 0.0, 3.0])
    assert float(fn(clip, frame, target, w)) == pytest.approx(float((per * w).sum() / w.sum()), rel=1e-6)


def test_focal_reduces_to_bce_with_gamma0_alpha_off():
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
    ref = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert torch.allclose(focal_bce_with_logits(x, y, gamma=0.0, alpha=-1), ref)
    # confident correct predictions are down-weighted by (1 - p_t)^gamma
    easy = focal_bce_with_logits(torch.tensor([5.0]), torch.tensor([1.0]), gamma=2.0, alpha=-1)
    assert float(easy) < 1e-4 * float(F.binary_cross_entropy_with_logits(torch.tensor([5.0]), torch.tensor([1.0])))


def test_cross_entropy_with_soft_targets_matches_torch():
    x = torch.randn(4, 5)
    y = torch.softmax(torch.randn(4, 5), -1)
    fn = ClipFrameLoss("ce", frame_weight=0.0)
    assert float(fn(x, x[:, None], y)) == pytest.approx(float(F.cross_entropy(x, y)), rel=1e-6)


def test_gradients_reach_clip_and_frame_logits():
    clip = torch.randn(2, 3, requires_grad=True)
    frame = torch.randn(2, 4, 3, requires_grad=True)
    ClipFrameLoss("focal")(clip, frame, torch.ones(2, 3)).backward()
    assert clip.grad.abs().sum() > 0
    assert frame.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        ClipFrameLoss("mse")
    with pytest.raises(ValueError, match="frame_weight"):
        ClipFrameLoss("bce", frame_weight=-1)


def test_cross_entropy_renormalises_multi_hot_targets():
    x = torch.randn(2, 4)
    multi = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    dist = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    fn = ClipFrameLoss("ce", frame_weight=0.0)
    assert float(fn(x, x[:, None], multi)) == pytest.approx(float(F.cross_entropy(x, dist)), rel=1e-6)
