from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from training.losses import (
    ABLATIONS,
    QLungLoss,
    QLungLossConfig,
    ablation,
    additive_angular_margin_loss,
    class_margins,
    combined_margins,
)


def test_class_margin_is_log_scaled_and_uniform_gets_m_target() -> None:
    assert torch.allclose(class_margins([10, 10, 10, 10], 0.2), torch.full((4,), 0.2))
    counts = [2063, 1215, 501, 363]  # ICBHI training cycles
    margins = class_margins(counts, 0.2)
    total = sum(counts)
    for k, n in enumerate(counts):
        assert margins[k].item() == pytest.approx(0.2 / math.log(4) * -math.log(n / total), rel=1e-6)
    assert margins[3] > margins[2] > margins[1] > margins[0]  # rarer classes, larger margins
    with pytest.raises(ValueError):
        class_margins([5, 0, 1, 1], 0.2)


def test_combined_margin_reduces_to_each_part() -> None:
    labels = torch.tensor([0, 3, 1])
    aqs = torch.tensor([0.2, 0.9, 0.5])
    table = class_margins([2063, 1215, 501, 363], 0.2)
    only_quality = combined_margins(labels, aqs, table, QLungLossConfig(gamma=1.0))
    only_class = combined_margins(labels, aqs, table, QLungLossConfig(gamma=0.0))
    assert torch.allclose(only_quality, 0.5 * aqs)
    assert torch.allclose(only_class, table[labels])
    half = combined_margins(labels, aqs, table, QLungLossConfig())
    assert torch.allclose(half, 0.5 * 0.5 * aqs + 0.5 * table[labels])
    fixed = combined_margins(labels, aqs, table, QLungLossConfig(margin="fixed"))
    assert torch.allclose(fixed, torch.full((3,), 0.2))
    quality = combined_margins(labels, aqs, table, QLungLossConfig(margin="quality"))
    assert torch.allclose(quality, 0.5 * 0.5 * aqs + 0.5 * 0.2)


def test_dfam_by_hand() -> None:
    cos = torch.tensor([[0.5, 0.2, -0.1, 0.3], [0.1, 0.7, 0.0, -0.2]])
    labels = torch.tensor([0, 3])
    margins = torch.tensor([0.1, 0.3])
    expected = 0.0
    for row, y, m in ((cos[0], 0, 0.1), (cos[1], 3, 0.3)):
        target = math.cos(math.acos(row[y].item()) + m)
        others = sum(math.exp(15 * row[j].item()) for j in range(4) if j != y)
        expected += -math.log(math.exp(15 * target) / (math.exp(15 * target) + others)) / 2
    assert additive_angular_margin_loss(cos, labels, margins, 15.0).item() == pytest.approx(expected, rel=1e-5)


def test_zero_margin_is_plain_ce_on_scaled_cosine() -> None:
    torch.manual_seed(0)
    cos = torch.rand(16, 4) * 2 - 1
    labels = torch.randint(0, 4, (16,))
    got = additive_angular_margin_loss(cos, labels, torch.zeros(16), 15.0)
    assert got.item() == pytest.approx(F.cross_entropy(15 * cos, labels).item(), rel=1e-5)


def test_guard_past_pi_keeps_the_target_logit_decreasing() -> None:
    m = torch.tensor([0.5])
    angles = torch.linspace(math.pi - 1.0, math.pi - 0.01, 50)
    losses = []
    for theta in angles:
        cos = torch.tensor([[math.cos(theta), 0.0, 0.0, 0.0]])
        losses.append(additive_angular_margin_loss(cos, torch.tensor([0]), m, 15.0).item())
    assert all(b >= a - 1e-6 for a, b in zip(losses, losses[1:]))  # a worse angle never lowers the loss


def test_gradients_finite_near_pi_and_in_half_precision() -> None:
    cos = torch.tensor([[-1.0, 0.3, 0.2, 0.1], [1.0, -1.0, 0.0, 0.5], [-0.9999, 0.1, 0.1, 0.1]], requires_grad=True)
    loss = additive_angular_margin_loss(cos, torch.tensor([0, 0, 0]), torch.tensor([0.3, 0.3, 0.3]), 15.0)
    loss.backward()
    assert torch.isfinite(cos.grad).all()
    half = (torch.rand(8, 4) * 2 - 1).half().requires_grad_()
    criterion = QLungLoss(QLungLossConfig(), [2063, 1215, 501, 363])
    total, parts = criterion(37 * half, half, torch.randint(0, 4, (8,)), torch.rand(8).half())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(half.grad).all() and set(parts) == {"ce", "dfam", "margin"}


def test_total_is_ce_plus_lambda_dfam_and_ablations() -> None:
    torch.manual_seed(1)
    cos = torch.rand(8, 4) * 2 - 1
    labels, aqs = torch.randint(0, 4, (8,)), torch.rand(8)
    counts = [2063, 1215, 501, 363]
    criterion = QLungLoss(QLungLossConfig(), counts)
    total, parts = criterion(37 * cos, cos, labels, aqs)
    margins = combined_margins(labels, aqs, class_margins(counts, 0.2), QLungLossConfig())
    expected = F.cross_entropy(37 * cos, labels) + 0.4 * additive_angular_margin_loss(cos, labels, margins, 15.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    ce_only, parts = QLungLoss(ABLATIONS["ce"], counts)(37 * cos, cos, labels, aqs)
    assert ce_only.item() == pytest.approx(F.cross_entropy(37 * cos, labels).item()) and set(parts) == {"ce"}
    assert list(ABLATIONS) == ["ce", "fixed-margin", "quality-margin", "class-margin", "qlung"]
    assert ablation("qlung", lam=1.0).lam == 1.0
    with pytest.raises(ValueError, match="unknown loss"):
        ablation("arcface")
    with pytest.raises(ValueError, match="margin must be"):
        QLungLossConfig(margin="huge")
