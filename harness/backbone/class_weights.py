"""Per-class statistics and weights shared by the fairness-aware methods (FERD's reweighting, Fair-ARD):
per-class means that keep a class absent from the batch at its previous value, the least PGD steps
(LPS) of each sample, and Fair-ARD's (Table 6) weighting functions of the mean LPS κ_c."""

from __future__ import annotations

import torch

from harness.backbone.devices import to_host

LPS_WEIGHTINGS = ("power", "linear", "sigmoid", "tanh")
POWER_EPS = 1e-5  # Fair-ARD's (κ + 1e-5)^−β


def class_means(values: torch.Tensor, labels: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Per-class mean of ``values``; a class absent from ``labels`` keeps its ``previous`` entry.

    With values = −m this is D_c of Eq. 2; with values = LPS it is Fair-ARD's κ_c.
    """
    previous = previous.to(torch.float64)
    labels = to_host(labels)
    counts = torch.bincount(labels, minlength=len(previous)).to(torch.float64)
    sums = torch.zeros_like(previous).index_add_(0, labels, to_host(values).to(torch.float64))
    return torch.where(counts > 0, sums / counts.clamp(min=1), previous)


def lps_weights(kappa: torch.Tensor, mode: str, steps: int, beta: float = 2.0, lam: float = 0.0) -> torch.Tensor:
    """Table 6 (Fair-ARD) weights from the mean least PGD steps κ_c (K = ``steps``), summing to 1.

    power ω = (κ + 1e-5)^−β; linear ω = 1 − κ/(K+1); sigmoid ω = σ(λ + 5(1 − 2κ/K));
    tanh ω = (1 + tanh(λ + 5(1 − 2κ/K)))/2. Small κ (a class broken in few steps) weighs more.
    """
    if mode == "power":
        weights = (kappa + POWER_EPS) ** -beta
    elif mode == "linear":
        weights = 1 - kappa / (steps + 1)
    elif mode == "sigmoid":
        weights = torch.sigmoid(lam + 5 * (1 - 2 * kappa / steps))
    elif mode == "tanh":
        weights = (1 + torch.tanh(lam + 5 * (1 - 2 * kappa / steps))) / 2
    else:
        raise ValueError(f"unknown LPS weighting {mode!r}")
    return weights / weights.sum()


def least_pgd_steps(wrong: torch.Tensor) -> torch.Tensor:
    """LPS per sample from ``wrong`` [K+1, N] (row t: iterate x^(t) misclassified).

    The first t ∈ [0, K] with a misclassified iterate; K when the sample is never misclassified.
    """
    steps = len(wrong) - 1
    t = torch.arange(len(wrong), device=wrong.device)[:, None].expand_as(wrong)
    return torch.where(wrong, t, torch.full_like(t, steps)).min(dim=0).values
