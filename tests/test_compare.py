"""Differences with intervals (harness.report.compare, ``compare``, ``table --vs``) against known answers."""

import itertools
import json
import math

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.report.collect import open_store
from harness.report.compare import compare_rows, paired_bootstrap, render_comparisons, resolve_row, scores_of_counts
from harness.report.tables import build_table, render
from tests.report_fixture import write_run
from tests.test_report import cells_of, harness


def test_scores_of_counts_match_a_hand_computation():
    correct, totals = np.array([[30, 50, 90]]), np.array([[100, 100, 200]])
    assert scores_of_counts(correct, totals, "avg")[0] == pytest.approx(100 * 170 / 400)  # image-weighted
    assert scores_of_counts(correct, totals, "worst")[0] == pytest.approx(30.0)
    assert scores_of_counts(correct, totals, "worst10")[0] == pytest.approx(30.0)  # ⌈0.3⌉ = 1 class
    accuracies = np.array([30.0, 50.0, 45.0])
    assert scores_of_counts(correct, totals, "nsd")[0] == pytest.approx(accuracies.std() / accuracies.mean())
    assert math.isnan(scores_of_counts(np.zeros((1, 3)), totals, "nsd")[0])


def test_seed_part_of_the_interval_is_the_paired_t_interval():
    """With 10⁹ images per class the test set adds nothing: the interval is then the paired t-interval
    of the per-seed differences, mean ± t(n − 1, 0.975) · s / √n, here 4 ± 2.7764 · √10 / √5."""
    big = 10 ** 9
    per_seed_gap = np.array([1.0, 2.0, 3.0, 5.0, 9.0])  # points of accuracy, A above B; mean 4, s² = 10
    accuracy_b = np.array([0.50, 0.55, 0.52, 0.48, 0.51])
    correct_b = np.round(np.stack([accuracy_b, accuracy_b], axis=1) * big).astype(np.int64)
    correct_a = correct_b + np.round(per_seed_gap[:, None] / 100 * big).astype(np.int64)
    totals = np.full((5, 2), big)
    found = paired_bootstrap(correct_a, totals, correct_b, totals, "avg", samples=200_000, seed=3)
    assert found.estimate == pytest.approx(4.0, abs=1e-6)
    half_width = 2.7764 * math.sqrt(10) / math.sqrt(5)  # t(4) 97.5 % quantile from the table
    assert found.low == pytest.approx(4.0 - half_width, abs=0.05)
    assert found.high == pytest.approx(4.0 + half_width, abs=0.05)
    assert found.established and found.sign == 1
    # the same mean over three seeds of wider spread is not established: t(2) = 4.30
    wide = np.array([-1.0, 3.0, 10.0])
    correct_a3 = correct_b[:3] + np.round(wide[:, None] / 100 * big).astype(np.int64)
    assert not paired_bootstrap(correct_a3, totals[:3], correct_b[:3], totals[:3], "avg", seed=3).established


def test_interval_keeps_its_level_with_three_seeds_and_no_true_difference():
    """A and B alike up to seed-to-seed noise (2 points) and the test set (1,000 images a class): the
    95 % interval may exclude 0 in about 5 % of trials. Resampling the three seeds did in ~19 %."""
    rng = np.random.default_rng(7)
    totals = np.full((3, 10), 1000)
    trials, rejected = 400, 0
    for trial in range(trials):
        accuracy_a, accuracy_b = (0.6 + rng.normal(0, 0.02, size=(3, 1)) + np.zeros((1, 10)) for _ in "ab")
        correct_a, correct_b = rng.binomial(totals, accuracy_a), rng.binomial(totals, accuracy_b)
        rejected += paired_bootstrap(correct_a, totals, correct_b, totals, "avg", samples=1000, seed=trial).established
    assert rejected / trials <= 0.08, rejected / trials


def test_test_set_part_of_the_interval_is_the_binomial_spread():
    """One seed: the interval is the test set's alone, ±1.96·sd with sd² = Σ_c n_c a_c (1 − a_c) / N² per row."""
    totals = np.array([[1000, 1000]])
    correct_a, correct_b = np.array([[800, 600]]), np.array([[700, 500]])
    found = paired_bootstrap(correct_a, totals, correct_b, totals, "avg", samples=40000, seed=1)
    variance = sum(1000 * p * (1 - p) for p in (0.8, 0.6, 0.7, 0.5)) / 2000 ** 2
    half_width = 1.96 * 100 * math.sqrt(variance)
    assert found.estimate == pytest.approx(10.0)
    assert (found.high - found.low) / 2 == pytest.approx(half_width, rel=0.05)
    assert (found.low + found.high) / 2 == pytest.approx(10.0, abs=0.1)
    small = paired_bootstrap(correct_a // 20, totals // 20, correct_b // 20, totals // 20, "avg", seed=1)
    assert not small.established  # the same gap on 100 images is within chance


def compare_store(tmp_path):
    """A: class accuracies (80, 60) ± seed noise; B: (70, 50); C: like A on one seed only; 500 images a class."""
    results = tmp_path / "results"
    shifts = {0: 0, 1: 10, 2: -10}
    for method, (first, second), seeds in (("ferd", (400, 300), (0, 1, 2)), ("cmi", (350, 250), (0, 1, 2)),
                                           ("dfhl", (400, 300), (2,))):
        for seed in seeds:
            folder = write_run(results, method, seed, {"clean": (0, 0, 0)})
            hits = [first + shifts[seed], second + shifts[seed], 250]
            confusion = [[hits[i] if j == i else (500 - hits[i] if j == (i + 1) % 3 else 0) for j in range(3)]
                         for i in range(3)]
            metrics = json.loads((folder / "metrics.json").read_text())
            per_class = [h / 5 for h in hits]
            metrics["attacks"] = {"clean": {"n": 1500, "avg": sum(hits) / 15, "worst": min(per_class),
                                            "worst10": min(per_class), "nsd": float(np.std(per_class) / np.mean(per_class)),
                                            "per_class": per_class, "confusion": confusion}}
            (folder / "metrics.json").write_text(json.dumps(metrics))
    return results


def test_compare_rows_pairs_common_seeds_and_names_the_better_row(tmp_path):
    store = open_store("fix", compare_store(tmp_path))
    [comparison] = compare_rows(store, "ferd", "cmi", metrics=("avg", "worst", "nsd"), seed=0)
    assert comparison.seeds == [0, 1, 2]
    by_metric = {line.metric: line for line in comparison.lines}
    assert by_metric["avg"].difference.estimate == pytest.approx(100 * 100 / 1500)  # 100 more hits of 1,500
    # worst class: the third (50 %) for both, except cmi's second class at seed 2 (240 of 500 = 48 %)
    assert by_metric["worst"].difference.estimate == pytest.approx((0 + 0 + 2) / 3)
    assert by_metric["avg"].difference.established and by_metric["avg"].difference.sign == 1
    text = render_comparisons([comparison])
    assert "A = ferd, B = cmi" in text and "A better" in text and "3 common seeds (0, 1, 2)" in text
    [single] = compare_rows(store, "dfhl", "cmi")
    assert single.seeds == [2] and "test set only" in render_comparisons([single])
    csv = render_comparisons([comparison], "csv").splitlines()
    assert csv[0].startswith("dataset,student,a,b,seeds,attack,metric") and len(csv) == 4


def test_rows_are_resolved_by_method_or_by_some_of_their_values(tmp_path):
    results = tmp_path / "results"
    for gamma in (0.0, 0.5):
        write_run(results, "ferd", 0, {"clean": (50, 40, 0.1)}, params={"gamma": gamma})
    write_run(results, "cmi", 0, {"clean": (50, 40, 0.1)})
    store = open_store("fix", results)
    assert resolve_row(store, "cmi") == "cmi"
    assert resolve_row(store, "ferd (gamma=0.5)") == "ferd (gamma=0.5)"
    with pytest.raises(HarnessError, match="matches several rows"):
        resolve_row(store, "ferd")
    with pytest.raises(HarnessError, match="did you mean 'cmi'"):
        resolve_row(store, "cmj")


def test_table_vs_marks_established_differences(tmp_path):
    store = open_store("fix", compare_store(tmp_path))
    table = build_table(store, metric="avg", versus="cmi")
    text = render(table)
    assert cells_of(text, "ferd")[-1] == "**63.33 ± 1.33 ▲**"  # (950 + 2·shift) / 15 over shifts 0, ±10
    assert cells_of(text, "cmi")[-1] == "56.67 ± 1.33"  # the reference row: no mark
    assert cells_of(text, "dfhl")[-1] == "<u>62.00 ▲</u>"  # one seed, 6.7 points above cmi's on 1,500 images
    assert "▲ / ▼ above / below cmi" in text
    csv = render(build_table(store, metric="avg", versus="cmi"), "csv")
    assert "vs_difference,vs_low,vs_high" in csv.splitlines()[0]
    with pytest.raises(HarnessError, match="--vs: fix has no row 'zskt'"):
        build_table(store, versus="zskt")


def test_compare_command(tmp_path):
    compare_store(tmp_path)
    done = harness("compare", "fix", "ferd", "cmi", "--samples", "500", cwd=tmp_path)
    assert done.returncode == 0 and "A = ferd, B = cmi" in done.stdout
    for bad, message in ((("compare", "fix", "ferd", "ferd"), "the same row"),
                         (("compare", "fix", "ferd", "zskt"), "no row 'zskt'"),
                         (("compare", "fix", "ferd", "cmi", "--metrics", "best"), "--metrics: unknown 'best'"),
                         (("compare", "fix", "ferd", "cmi", "--level", "95"), "--level: 95.0 is not between")):
        result = harness(*bad, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1, \
            result.stderr
