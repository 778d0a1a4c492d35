"""Robust-fairness metrics (METHODS.md §9) on hand-made label arrays with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import (
    confusion_matrix,
    normalized_entropy,
    normalized_std,
    per_class_accuracy,
    summarize,
    target_histogram,
    worst_class_ci,
    worst_k_mean,
)

# A 3-class case worked out by hand:
#   class 0: 4 samples, predicted 0 0 0 1 -> 3/4 = 75 %
#   class 1: 3 samples, predicted 1 1 2   -> 2/3 = 66.67 %
#   class 2: 3 samples, predicted 2 0 0   -> 1/3 = 33.33 %
TARGETS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDICTIONS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 0])
CONFUSION = [[3, 1, 0], [0, 2, 1], [2, 0, 1]]
PER_CLASS = [75.0, 200 / 3, 100 / 3]
# mean 175/3; deviations 50/3, 25/3, -25; population variance (2500/9 + 625/9 + 625) / 3 = 8750/27
NSD = math.sqrt(8750 / 27) / (175 / 3)  # = 0.30861...
# Errors go to predicted classes 1 (t0->1), 2 (t1->2), 0, 0 (t2->0 twice): p = 1/2, 1/4, 1/4
HISTOGRAM = [2, 1, 1]
ENTROPY = (0.5 * math.log(2) + 2 * 0.25 * math.log(4)) / math.log(3)  # = 1.5 ln2 / ln3 = 0.94639...


@pytest.fixture
def three_class() -> dict:
    return summarize(TARGETS, PREDICTIONS, 3)


# --------------------------------------------------------------------------- building blocks
def test_confusion_matrix_rows_are_true_columns_predicted() -> None:
    confusion = confusion_matrix(TARGETS, PREDICTIONS, 3)
    assert confusion.tolist() == CONFUSION
    # A single asymmetric sample pins the orientation: true 0, predicted 2 -> row 0, column 2.
    assert confusion_matrix(np.array([0]), np.array([2]), 3).tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]


def test_per_class_accuracy_in_percent() -> None:
    per_class = per_class_accuracy(np.array(CONFUSION))
    np.testing.assert_allclose(per_class, PER_CLASS)


def test_per_class_accuracy_of_an_empty_class_is_nan() -> None:
    per_class = per_class_accuracy(np.array([[1, 1, 0], [0, 0, 0], [0, 0, 4]]))
    assert per_class[0] == 50.0 and math.isnan(per_class[1]) and per_class[2] == 100.0


def test_worst10_takes_ceil_of_a_tenth_of_the_classes() -> None:
    # C = 10 -> ceil(1.0) = 1 class: the single lowest.
    ten = np.array([90.0, 80, 70, 60, 50, 40, 30, 20, 10, 5])
    assert worst_k_mean(ten) == 5.0
    # C = 25 -> ceil(2.5) = 3 classes: 0, 4, 8 -> 4.
    twenty_five = np.random.default_rng(0).permutation(np.arange(25) * 4.0)
    assert worst_k_mean(twenty_five) == pytest.approx(4.0)
    # C = 3 -> ceil(0.3) = 1.
    assert worst_k_mean(np.array(PER_CLASS)) == pytest.approx(100 / 3)


def test_nsd_is_population_std_over_mean() -> None:
    assert normalized_std(np.array(PER_CLASS)) == pytest.approx(NSD)
    # ddof 0: [50, 100] has std 25 (ddof 1 would give 35.36), mean 75.
    assert normalized_std(np.array([50.0, 100.0])) == pytest.approx(1 / 3)
    assert normalized_std(np.array([40.0, 40.0, 40.0])) == 0.0


def test_nsd_is_none_when_the_mean_is_zero() -> None:
    assert normalized_std(np.zeros(4)) is None


def test_target_histogram_counts_only_errors_by_predicted_class() -> None:
    assert target_histogram(TARGETS, PREDICTIONS, 3).tolist() == HISTOGRAM
    # Correct predictions of class 2 are not counted; the one error predicted 2 is.
    assert target_histogram(np.array([2, 2, 2, 0]), np.array([2, 2, 2, 2]), 4).tolist() == [0, 0, 1, 0]
    assert target_histogram(np.array([1, 2]), np.array([1, 2]), 3).tolist() == [0, 0, 0]


def test_normalized_entropy_hand_values() -> None:
    # Uniform targets over all C classes -> 1 (errors 0->1, 1->2, 2->0).
    uniform = target_histogram(np.array([0, 1, 2]), np.array([1, 2, 0]), 3)
    assert uniform.tolist() == [1, 1, 1]
    assert normalized_entropy(uniform) == pytest.approx(1.0)
    assert normalized_entropy(np.array([3, 3, 3, 3])) == pytest.approx(1.0)
    # All errors into one class -> 0.
    assert normalized_entropy(np.array([0, 5, 0, 0])) == 0.0
    # Half and half over 2 of 4 classes -> ln 2 / ln 4 = 0.5 (normalised by log C, not log 2).
    assert normalized_entropy(np.array([2, 2, 0, 0])) == pytest.approx(0.5)
    assert normalized_entropy(np.array(HISTOGRAM)) == pytest.approx(ENTROPY)


def test_normalized_entropy_is_none_without_errors() -> None:
    assert normalized_entropy(np.zeros(10, dtype=np.int64)) is None


# --------------------------------------------------------------------------- summarize
def test_summarize_keys(three_class: dict) -> None:
    assert set(three_class) == {"n", "avg", "worst", "worst10", "nsd", "per_class", "confusion",
                                "target_histogram", "target_entropy", "worst_ci"}


def test_summarize_values(three_class: dict) -> None:
    s = three_class
    assert s["n"] == 10
    assert s["avg"] == pytest.approx(60.0)  # (3 + 2 + 1) / 10
    assert s["per_class"] == pytest.approx(PER_CLASS)
    assert s["worst"] == pytest.approx(100 / 3)
    assert s["worst10"] == pytest.approx(100 / 3)
    assert s["nsd"] == pytest.approx(NSD)
    assert s["confusion"] == CONFUSION
    assert s["target_histogram"] == HISTOGRAM
    assert s["target_entropy"] == pytest.approx(ENTROPY)
    lo, hi = s["worst_ci"]
    assert lo <= 100 / 3 <= hi


def test_summarize_all_correct() -> None:
    s = summarize(TARGETS, TARGETS, 3)
    assert s["avg"] == s["worst"] == s["worst10"] == 100.0
    assert s["nsd"] == 0.0
    assert s["target_histogram"] == [0, 0, 0]
    assert s["target_entropy"] is None
    assert s["worst_ci"] == [100.0, 100.0]


def test_summarize_all_wrong_has_no_nsd() -> None:
    s = summarize(TARGETS, (TARGETS + 1) % 3, 3)
    assert s["avg"] == s["worst"] == 0.0
    assert s["nsd"] is None
    assert s["target_histogram"] == [3, 4, 3]  # 0->1 (4), 1->2 (3), 2->0 (3)


def test_class_without_samples_is_none_and_ignored() -> None:
    # Class 1 never occurs as a label (but is predicted once).
    s = summarize(np.array([0, 0, 2, 2]), np.array([0, 1, 2, 2]), 3)
    assert s["per_class"] == [50.0, None, 100.0]
    assert s["worst"] == 50.0  # not NaN, not 0
    assert s["worst10"] == 50.0
    assert s["avg"] == 75.0
    assert s["nsd"] == pytest.approx(1 / 3)  # over the two measured classes [50, 100]
    assert s["confusion"] == [[1, 1, 0], [0, 0, 0], [0, 0, 2]]
    lo, hi = s["worst_ci"]
    assert 0.0 <= lo <= 50.0 <= hi <= 100.0


@pytest.mark.parametrize(("num_classes", "expected"), [(10, 10.0), (25, 20.0)])
def test_summarize_worst10(num_classes: int, expected: float) -> None:
    # 10 samples per class; classes 0, 1, 2 get 1, 2, 3 right, every other class all right.
    targets = np.repeat(np.arange(num_classes), 10)
    predictions = targets.copy()
    for c, right in enumerate((1, 2, 3)):
        predictions[c * 10 + right : c * 10 + 10] = (c + 1) % num_classes
    s = summarize(targets, predictions, num_classes)
    assert s["per_class"][:4] == [10.0, 20.0, 30.0, 100.0]
    assert s["worst"] == 10.0
    # C = 10: the lowest 1 class (10 %); C = 25: the lowest 3 classes, mean(10, 20, 30) = 20 %.
    assert s["worst10"] == pytest.approx(expected)


# --------------------------------------------------------------------------- worst-class CI
def test_worst_ci_contains_the_point_estimate() -> None:
    confusion = np.diag([90, 60, 80]) + np.array([[0, 10, 0], [0, 0, 40], [20, 0, 0]])
    lo, hi = worst_class_ci(confusion)
    assert lo <= 60.0 <= hi
    assert lo < hi  # a real interval: 100 samples at 60 % are not all the same bootstrap


def test_worst_ci_degenerate_when_all_correct() -> None:
    assert worst_class_ci(np.diag([30, 20, 50])) == [100.0, 100.0]


def test_worst_ci_matches_binomial_quantiles() -> None:
    # Class 1 at 50/100, the others perfect: the bootstrap worst is 100·Binomial(100, 0.5)/100,
    # whose 2.5 % and 97.5 % quantiles are 40 and 60 (a 90 % interval would give 42 and 58).
    confusion = np.diag([100, 50, 100])
    confusion[1, 0] = 50
    lo, hi = worst_class_ci(confusion)
    assert 39.0 <= lo <= 41.0 and 59.0 <= hi <= 61.0


def test_worst_ci_is_seeded() -> None:
    confusion = np.array(CONFUSION)
    assert worst_class_ci(confusion, seed=3) == worst_class_ci(confusion, seed=3)


def test_worst_ci_coverage() -> None:
    """95 % CI covers the true worst class (50 %) in most simulated test sets."""
    rng = np.random.default_rng(12345)
    truth = np.full(10, 0.9)
    truth[3] = 0.5
    n, simulations, covered = 100, 300, 0
    for i in range(simulations):
        correct = rng.binomial(n, truth)
        confusion = np.diag(correct)
        for c in range(10):  # the errors of class c go to class c+1
            confusion[c, (c + 1) % 10] = n - correct[c]
        lo, hi = worst_class_ci(confusion, samples=500, seed=i)
        covered += lo <= 50.0 <= hi
    assert 0.88 <= covered / simulations <= 0.99, covered
