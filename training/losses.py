"""QLung's loss: cross-entropy on angular logits plus a margin term whose margin depends on quality and class.

Margins (paper section 3, defaults in `QLungLossConfig`):
- quality margin `m_q = kappa * AQS`, per sample;
- class margin `m_c(y) = s_c * (-log pi_y)` with `pi_y` the training-set frequency of class y and
  `s_c = m_target / log C`, so a class at uniform frequency gets exactly `m_target` and rare classes more;
- combined `m_d = gamma * m_q + (1 - gamma) * m_c(y)`.
The margin term (DFAM) is an additive angular margin on the target: `cos(theta_y + m_d)` in place of
`cos(theta_y)`, scaled by s_d, with the usual guard where theta_y + m_d would pass pi. Total:
`L = CE(s_a * cos theta, y) + lambda * L_DFAM`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

MARGINS = ("none", "fixed", "quality", "quality+class")
HEADS = ("angular", "linear")


@dataclass(frozen=True)
class QLungLossConfig:
    lam: float = 0.4
    """Weight of the margin term."""
    gamma: float = 0.5
    """Share of the quality margin in the combined margin."""
    m_target: float = 0.2
    s_a: float = 37.0
    """Scale of the angular logits (training CE and inference)."""
    s_d: float = 15.0
    """Scale inside the margin term."""
    kappa: float = 0.5
    head: str = "angular"
    margin: str = "quality+class"
    """'none' (plain CE), 'fixed' (m_target for all), 'quality' (class part fixed at m_target), 'quality+class'."""

    def __post_init__(self) -> None:
        if self.margin not in MARGINS:
            raise ValueError(f"margin must be one of {MARGINS}, got {self.margin!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")


ABLATIONS: dict[str, QLungLossConfig] = {
    "ce": QLungLossConfig(head="linear", margin="none"),
    "fixed-margin": QLungLossConfig(head="linear", margin="fixed"),
    "quality-margin": QLungLossConfig(head="linear", margin="quality"),
    "class-margin": QLungLossConfig(head="linear", margin="quality+class"),
    "qlung": QLungLossConfig(),
}
"""The paper's ablation rows, each adding one piece: CE; + fixed angular margin; + quality margin;
+ class margin; + angular classifier (full QLung)."""


def class_margins(class_counts: Sequence[int], m_target: float) -> torch.Tensor:
    """Log-scaled margin of each class from its training-set count."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.numel() < 2 or bool((counts <= 0).any()):
        raise ValueError(f"need a positive count for each of at least two classes, got {list(class_counts)}")
    prior = counts / counts.sum()
    return (m_target / math.log(len(counts)) * -prior.log()).float()


def combined_margins(
    labels: torch.Tensor, aqs: torch.Tensor, class_margin: torch.Tensor, config: QLungLossConfig
) -> torch.Tensor:
    """Per-sample margin m_d for the configured margin kind."""
    if config.margin == "fixed":
        return torch.full(labels.shape, config.m_target, device=labels.device)
    quality = config.kappa * aqs.float()
    per_class = class_margin.to(labels.device)[labels] if config.margin == "quality+class" else config.m_target
    return config.gamma * quality + (1.0 - config.gamma) * per_class


def additive_angular_margin_loss(
    cosine: torch.Tensor, labels: torch.Tensor, margins: torch.Tensor, scale: float
) -> torch.Tensor:
    """Mean of -log softmax(scale * [cos(theta_y + m) at y, cos(theta_j) elsewhere])[y].

    Where theta_y + m would pass pi, cos(theta + m) would turn back up and reward a worse angle; there the
    target logit continues linearly as cos(theta) - m * sin(m) (ArcFace's guard), which keeps it decreasing.
    """
    cosine = cosine.float().clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    margins = margins.float()
    target = cosine.gather(1, labels[:, None]).squeeze(1)
    sine = torch.sqrt((1.0 - target * target).clamp_min(1e-12))
    shifted = target * torch.cos(margins) - sine * torch.sin(margins)
    guarded = torch.where(target > torch.cos(math.pi - margins), shifted, target - margins * torch.sin(margins))
    logits = cosine.scatter(1, labels[:, None], guarded[:, None]) * scale
    return F.cross_entropy(logits, labels)


class QLungLoss(nn.Module):
    """The full objective; `forward` also returns its parts for logging."""

    def __init__(self, config: QLungLossConfig, class_counts: Sequence[int]) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("class_margin", class_margins(class_counts, config.m_target))

    def forward(
        self, logits: torch.Tensor, cosine: torch.Tensor, labels: torch.Tensor, aqs: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        ce = F.cross_entropy(logits.float(), labels)
        if self.config.margin == "none":
            return ce, {"ce": float(ce.detach())}
        margins = combined_margins(labels, aqs, self.class_margin, self.config)
        dfam = additive_angular_margin_loss(cosine, labels, margins, self.config.s_d)
        total = ce + self.config.lam * dfam
        return total, {"ce": float(ce.detach()), "dfam": float(dfam.detach()), "margin": float(margins.mean())}


def ablation(name: str, **overrides: float) -> QLungLossConfig:
    """An ablation row by name, with hyperparameters overridden."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown loss {name!r} (expected one of {', '.join(ABLATIONS)})")
    return replace(ABLATIONS[name], **overrides)
