"""Robust-fairness metrics from per-sample predictions (docs/methods.md).

Everything is derived from two integer arrays per attack, the true labels and the
predicted labels on the (adversarial) inputs, so tables and figures never re-attack.
Accuracies are in percent; NSD and the target entropy are fractions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    flat = np.asarray(targets, dtype=np.int64) * num_classes + np.asarray(predictions, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """a_c in percent for every class (NaN for a class without samples)."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * np.diag(confusion) / totals


def worst_k_mean(per_class: np.ndarray, fraction: float = 0.1) -> float:
    """Mean of the lowest ⌈fraction·C⌉ class accuracies (Worst-10 %)."""
    k = math.ceil(fraction * len(per_class))
    return float(np.sort(per_class)[:k].mean())


def normalized_std(per_class: np.ndarray) -> float | None:
    """NSD = std(a) / mean(a) with the population std (ddof 0); None when the mean is 0."""
    mean = float(per_class.mean())
    return float(per_class.std(ddof=0) / mean) if mean > 0 else None


def target_histogram(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """How often each class is predicted for a misclassified sample (the attack's targets)."""
    wrong = np.asarray(predictions)[np.asarray(targets) != np.asarray(predictions)]
    return np.bincount(wrong.astype(np.int64), minlength=num_classes)


def normalized_entropy(histogram: np.ndarray) -> float | None:
    """Shannon entropy of the histogram divided by log C (1 = uniform); None if empty."""
    total = histogram.sum()
    if total == 0:
        return None
    p = histogram[histogram > 0] / total
    return float(max(0.0, -(p * np.log(p)).sum() / math.log(len(histogram))))


def worst_class_ci(confusion: np.ndarray, *, samples: int = 2000, level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap CI of the worst-class accuracy over test samples.

    Resampling each class's samples with replacement makes its correct count
    Binomial(n_c, a_c), so the bootstrap is drawn exactly and cheaply that way.
    """
    totals = confusion.sum(axis=1)
    present = totals > 0
    n, p = totals[present], np.diag(confusion)[present] / totals[present]
    rng = np.random.default_rng(seed)
    worst = (100.0 * rng.binomial(n, p, size=(samples, len(n))) / n).min(axis=1)
    tail = (1 - level) / 2
    return [float(np.quantile(worst, tail)), float(np.quantile(worst, 1 - tail))]


def summarize(targets: np.ndarray, predictions: np.ndarray, num_classes: int, *, seed: int = 0) -> dict[str, Any]:
    """Every metric of one attack: avg, worst, worst10, nsd, per-class, confusion, targets."""
    targets = np.asarray(targets)
    predictions = np.asarray(predictions)
    confusion = confusion_matrix(targets, predictions, num_classes)
    per_class = per_class_accuracy(confusion)
    measured = per_class[~np.isnan(per_class)]
    histogram = target_histogram(targets, predictions, num_classes)
    return {
        "n": int(len(targets)),
        "avg": float(100.0 * (targets == predictions).mean()),
        "worst": float(measured.min()),
        "worst10": worst_k_mean(measured),
        "nsd": normalized_std(measured),
        "per_class": [None if math.isnan(a) else float(a) for a in per_class],
        "confusion": confusion.tolist(),
        "target_histogram": histogram.tolist(),
        "target_entropy": normalized_entropy(histogram),
        "worst_ci": worst_class_ci(confusion, seed=seed),
    }
