"""Differences between two rows of an experiment, with 95 % intervals (``harness compare``, ``table --vs``).

For two rows A and B of one student block (method variants, as in the tables), the estimate is the
mean over their common seeds of the paired difference ``d_s = score(A, seed s) − score(B, seed s)``
for every attack and score (Avg, Worst, Worst-10 %, NSD). Its interval is a Monte-Carlo convolution
of the two sources of chance:

* **seeds**: the paired t-interval, ``s/√n · T`` with ``s`` the sample standard deviation of the
  ``n`` per-seed differences and ``T`` Student's t with ``n − 1`` degrees of freedom. Resampling
  the seeds instead (a percentile bootstrap) is far too narrow at the 3–5 seeds a benchmark affords:
  with 3 seeds it cannot reach beyond the smallest and largest ``d_s`` and, in a simulation with no
  true difference, its "95 %" interval excluded 0 in 19 % of trials (14 % with 5 seeds); the
  t-interval keeps that near 5 % (``tests/test_compare.py``).
* **the finite test set**: within each run and class, the test images are drawn with replacement.
  The number of correct predictions of a class of ``n_c`` images at accuracy ``a_c`` is then
  Binomial(``n_c``, ``a_c``), so the draw is made exactly that way from the confusion matrices in
  ``metrics.json``, seeds held fixed. A and B are resampled independently: the positive correlation
  of two students scored on the same images is ignored.

Each replicate adds one draw of each part to the estimate; the interval is the replicates'
percentiles. Both parts err wide: the spread of the ``d_s`` already holds some test-set noise, and
the independent resampling of A and B ignores their correlation. A difference is *established* when
its interval excludes 0. With one common seed the interval covers the test set only, and ``compare``
says so.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.report.collect import Run, Store
from harness.report.names import ATTACK_TITLES, ATTACKS, METRIC_TITLES

LOWER_IS_BETTER = frozenset({"nsd"})
DEFAULT_SAMPLES = 4000


@dataclass(frozen=True)
class Difference:
    """``estimate`` (A − B) with its interval; ``seeds`` common seeds, ``samples`` bootstrap replicates."""

    estimate: float
    low: float
    high: float
    seeds: int
    samples: int

    @property
    def established(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def sign(self) -> int:
        """+1 when A is established above B, −1 below, 0 when the interval covers 0."""
        return 0 if not self.established else (1 if self.low > 0 else -1)


# --------------------------------------------------------------------------- scores of per-class counts
def scores_of_counts(correct: np.ndarray, totals: np.ndarray, metric: str) -> np.ndarray:
    """A score over the last axis (classes) of correct counts and class sizes: ``avg`` (percent of all
    images), ``worst`` (lowest class accuracy), ``worst10`` (mean of the lowest ⌈C/10⌉), ``nsd``
    (population std / mean of the class accuracies, NaN where the mean is 0)."""
    if metric == "avg":
        return 100.0 * correct.sum(axis=-1) / totals.sum(axis=-1)
    accuracy = 100.0 * correct / totals
    if metric == "worst":
        return accuracy.min(axis=-1)
    if metric == "worst10":
        k = math.ceil(0.1 * accuracy.shape[-1])
        return np.sort(accuracy, axis=-1)[..., :k].mean(axis=-1)
    if metric == "nsd":
        mean = accuracy.mean(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(mean > 0, accuracy.std(axis=-1) / mean, np.nan)
    raise HarnessError(f"unknown score '{metric}' (choose from avg, worst, worst10, nsd)")


def paired_bootstrap(correct_a: np.ndarray, totals_a: np.ndarray, correct_b: np.ndarray, totals_b: np.ndarray,
                     metric: str, *, samples: int = DEFAULT_SAMPLES, level: float = 0.95,
                     seed: int = 0) -> Difference:
    """The difference A − B of ``metric`` from per-seed, per-class counts (arrays seeds × classes, seed
    ``i`` of A paired with seed ``i`` of B), with its interval: Student-t over the seeds convolved
    with a binomial bootstrap of each class's test images (module docstring)."""
    correct_a, totals_a = np.asarray(correct_a, dtype=np.int64), np.asarray(totals_a, dtype=np.int64)
    correct_b, totals_b = np.asarray(correct_b, dtype=np.int64), np.asarray(totals_b, dtype=np.int64)
    if correct_a.shape != correct_b.shape or correct_a.ndim != 2:
        raise HarnessError(f"paired counts differ in shape: {correct_a.shape} vs {correct_b.shape}")
    seeds = correct_a.shape[0]
    observed = scores_of_counts(correct_a, totals_a, metric) - scores_of_counts(correct_b, totals_b, metric)
    defined = observed[~np.isnan(observed)]  # NSD is undefined for a run with every class at 0 %
    if not len(defined):
        return Difference(math.nan, math.nan, math.nan, seeds, samples)
    estimate = float(defined.mean())
    rng = np.random.default_rng(seed)
    replicate_a = rng.binomial(np.broadcast_to(totals_a, (samples, *totals_a.shape)), correct_a / totals_a)
    replicate_b = rng.binomial(np.broadcast_to(totals_b, (samples, *totals_b.shape)), correct_b / totals_b)
    differences = scores_of_counts(replicate_a, totals_a, metric) - scores_of_counts(replicate_b, totals_b, metric)
    with warnings.catch_warnings():  # a replicate whose NSD is undefined for every seed
        warnings.simplefilter("ignore", RuntimeWarning)
        test_set = np.nanmean(differences, axis=1) - np.nanmean(observed)
    if len(defined) > 1:
        seed_part = defined.std(ddof=1) / math.sqrt(len(defined)) * rng.standard_t(len(defined) - 1, size=samples)
    else:
        seed_part = np.zeros(samples)
    replicates = (estimate + test_set + seed_part)[~np.isnan(test_set)]
    if not len(replicates):
        return Difference(math.nan, math.nan, math.nan, seeds, samples)
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Difference(estimate, float(low), float(high), seeds, samples)


# --------------------------------------------------------------------------- rows of the store
def class_counts(run: Run, attack: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(correct, totals) per class of a finished run under ``attack``, from its confusion matrix."""
    result = ((run.metrics or {}).get("attacks") or {}).get(attack)
    if result is None:
        return None
    confusion = np.asarray(result["confusion"], dtype=np.int64)
    return np.diag(confusion).copy(), confusion.sum(axis=1)


def difference(runs_a: list[Run], runs_b: list[Run], attack: str, metric: str, *, samples: int = DEFAULT_SAMPLES,
               level: float = 0.95, seed: int = 0) -> Difference | None:
    """A − B over the seeds both rows finished under ``attack`` (None when they share none)."""
    by_seed_a = {run.seed: counts for run in runs_a if (counts := class_counts(run, attack)) is not None}
    by_seed_b = {run.seed: counts for run in runs_b if (counts := class_counts(run, attack)) is not None}
    common = sorted(set(by_seed_a) & set(by_seed_b))
    if not common:
        return None
    correct_a, totals_a = (np.stack(part) for part in zip(*(by_seed_a[s] for s in common)))
    correct_b, totals_b = (np.stack(part) for part in zip(*(by_seed_b[s] for s in common)))
    if correct_a.shape != correct_b.shape:
        raise HarnessError(f"{attack}: the two rows were evaluated on different numbers of classes")
    scored = (totals_a > 0).all(axis=0) & (totals_b > 0).all(axis=0)  # classes with test images in every run
    return paired_bootstrap(correct_a[:, scored], totals_a[:, scored], correct_b[:, scored], totals_b[:, scored],
                            metric, samples=samples, level=level, seed=seed)


def _parts(label: str) -> tuple[str, set[str]]:
    method, _, rest = label.partition(" (")
    return method, {part.strip() for part in rest.rstrip(")").split(",") if part.strip()}


def resolve_row(store: Store, name: str) -> str:
    """The variant label ``name`` stands for: itself, or the one variant of its method whose label holds
    every ``axis=value`` that ``name`` gives (``ferd`` when FERD has one row, ``ferd (gamma=0.3)``)."""
    variants = list(dict.fromkeys(run.variant for run in store.runs))
    if name in variants:
        return name
    method, wanted = _parts(name)
    matching = [v for v in variants if _parts(v)[0] == method and wanted <= _parts(v)[1]]
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise HarnessError(f"{store.name}: '{name}' matches several rows; name one of: {'; '.join(matching)}")
    close = difflib.get_close_matches(name, variants, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise HarnessError(f"{store.name}: no row '{name}'{hint}; rows: {'; '.join(variants)}")


@dataclass(frozen=True)
class Line:
    """One attack × score of a comparison: the row means over the common seeds and their difference."""

    attack: str
    metric: str
    mean_a: float
    mean_b: float
    difference: Difference


@dataclass(frozen=True)
class Comparison:
    block: tuple[str, str]  # (dataset, student)
    a: str
    b: str
    seeds: list[int]
    lines: list[Line]
    level: float


def _row_mean(runs: list[Run], seeds: list[int], attack: str, metric: str) -> float:
    values = [((run.metrics or {}).get("attacks") or {}).get(attack, {}).get(metric) for run in runs if run.seed in seeds]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def compare_rows(store: Store, a: str, b: str, *, attacks: list[str] | None = None,
                 metrics: tuple[str, ...] = ("avg", "worst", "nsd"), samples: int = DEFAULT_SAMPLES,
                 level: float = 0.95, seed: int = 0) -> list[Comparison]:
    """A against B in every student block where both have finished runs on common seeds."""
    a, b = resolve_row(store, a), resolve_row(store, b)
    if a == b:
        raise HarnessError(f"compare: A and B are the same row ('{a}')")
    comparisons = []
    for block in dict.fromkeys((run.dataset, run.student) for run in store.runs):
        runs_a = [r for r in store.finished() if (r.dataset, r.student) == block and r.variant == a]
        runs_b = [r for r in store.finished() if (r.dataset, r.student) == block and r.variant == b]
        seeds = sorted({r.seed for r in runs_a} & {r.seed for r in runs_b})
        if not seeds:
            continue
        present = {name for run in runs_a + runs_b for name in (run.metrics.get("attacks") or {})}
        lines = []
        for attack in [x for x in (attacks or ATTACKS) if x in present]:
            for metric in metrics:
                found = difference(runs_a, runs_b, attack, metric, samples=samples, level=level, seed=seed)
                if found is not None:
                    lines.append(Line(attack, metric, _row_mean(runs_a, seeds, attack, metric),
                                      _row_mean(runs_b, seeds, attack, metric), found))
        comparisons.append(Comparison(block, a, b, seeds, lines, level))
    if not comparisons:
        raise HarnessError(f"{store.name}: '{a}' and '{b}' have no finished runs of a common seed on one student")
    return comparisons


def verdict(line: Line, a: str, b: str) -> str:
    """Which row the interval establishes as better, or that it does not."""
    if not line.difference.established:
        return "not established"
    a_higher = line.difference.sign > 0
    better = a if a_higher != (line.metric in LOWER_IS_BETTER) else b
    return f"{better} better"


def render_comparisons(comparisons: list[Comparison], fmt: str = "md") -> str:
    """Markdown (one table per student block) or tidy CSV."""
    if fmt == "csv":
        records = [{"dataset": c.block[0], "student": c.block[1], "a": c.a, "b": c.b, "seeds": len(c.seeds),
                    "attack": line.attack, "metric": line.metric, "mean_a": line.mean_a, "mean_b": line.mean_b,
                    "difference": line.difference.estimate, "low": line.difference.low,
                    "high": line.difference.high, "established": line.difference.established}
                   for c in comparisons for line in c.lines]
        return pd.DataFrame(records).to_csv(index=False, float_format="%.6g")
    if fmt != "md":
        raise HarnessError(f"--format: '{fmt}' (choose md or csv)")
    parts = []
    for c in comparisons:
        places = {m: 3 if m == "nsd" else 2 for m in METRIC_TITLES}
        records = [{"Attack": ATTACK_TITLES[line.attack], "Score": METRIC_TITLES[line.metric],
                    "A": f"{line.mean_a:.{places[line.metric]}f}", "B": f"{line.mean_b:.{places[line.metric]}f}",
                    "A − B": f"{line.difference.estimate:+.{places[line.metric]}f}",
                    f"{c.level:.0%} interval": f"[{line.difference.low:+.{places[line.metric]}f}, "
                                               f"{line.difference.high:+.{places[line.metric]}f}]",
                    "Verdict": verdict(line, "A", "B")} for line in c.lines]
        body = pd.DataFrame(records).to_markdown(index=False, disable_numparse=True)
        samples = c.lines[0].difference.samples if c.lines else 0
        test_set = f"a bootstrap of each class's test images ({samples} replicates)"
        how = (f"One common seed ({c.seeds[0]}): the interval is {test_set}, the test set only, so seed-to-seed "
               "spread is not covered" if len(c.seeds) == 1 else
               f"Paired difference over {len(c.seeds)} common seeds ({', '.join(map(str, c.seeds))}); interval: "
               f"Student-t over the seeds convolved with {test_set}")
        parts.append(f"**{c.block[1]} ({c.block[0]}): A = {c.a}, B = {c.b}**\n\n{body}\n\n"
                     f"{how}. NSD: lower is better.\n")
    return "\n".join(parts)
