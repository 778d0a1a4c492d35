"""The paper's figures from the store (matplotlib/seaborn, Agg), PNG and PDF under ``reports/<experiment>/``.

Kinds (:data:`KINDS`): ``per-class`` (Fig. 1: the teacher's and each method's class-wise
accuracy, a panel per attack), ``confusion`` (Figs. 2, 9: row-normalised confusion matrices, a
file per attack, a panel per method), ``weights`` (Fig. 4: FERD's class sampling weights per
epoch, and per-class robustness with equal vs reweighted sampling), ``gamma`` (Fig. 5: Avg and
Worst against γ, or any swept ``--param``), ``epochs`` (Fig. 8: the held-out probes of
``history.jsonl`` per epoch) and ``samples`` (Figs. 6–7: synthetic images per method, a row per
teacher class). Each method keeps one colour in every figure (FERD red).
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.errors import HarnessError  # noqa: E402
from harness.report import methods as method_facts  # noqa: E402
from harness.report.collect import Run, Store, value_text  # noqa: E402
from harness.report.names import ATTACK_TITLES, ATTACKS, PLOT_KINDS  # noqa: E402
from harness.store import atomic_write_bytes  # noqa: E402

TEACHER_COLOR = "#222222"
TEACHER = "teacher"
MAX_ANNOTATED_CLASSES = 10  # confusion cells carry their number up to this many classes
MAX_LABELLED_CLASSES = 20  # beyond this, per-class plots draw lines and sparse ticks
GALLERY_CLASSES = 10  # classes (rows) shown per method in the samples figure
WEIGHT_PANELS_PER_ROW = 3  # class-weight panels per row in the weights figure; the comparison gets a row
Figure = Callable[[Store, "PlotOptions"], list[Path]]


# --------------------------------------------------------------------------- shared helpers
class PlotOptions:
    """What the ``plot`` command passes: attacks, output folder, file formats, swept parameter and
    a prefix for the file names."""

    def __init__(self, out: Path, attacks: list[str] | None = None, formats: tuple[str, ...] = ("png", "pdf"),
                 param: str = "gamma", prefix: str = "") -> None:
        self.out, self.attacks, self.formats, self.param = Path(out), attacks, formats, param
        self.prefix = prefix


def palette(store: Store, with_teacher: bool = False,
            label: Callable[[Run], str] = lambda run: run.variant) -> dict[str, Any]:
    """A colour per variant (or per ``label`` of a run): its method family's hue, in shades when a
    family has several."""
    variants = list(dict.fromkeys(label(run) for run in store.runs))
    families: dict[str, list[str]] = {}
    for run in store.runs:
        family = run.config.get("plugin") or run.method
        families.setdefault(family, [])
        if label(run) not in families[family]:
            families[family].append(label(run))
    spare = iter(sns.color_palette("tab10", len(families) + 10)[::-1])
    colors: dict[str, Any] = {TEACHER: TEACHER_COLOR} if with_teacher else {}
    for family, members in families.items():
        base = method_facts.family_color(family) or next(spare)
        shades = sns.light_palette(base, len(members) + 2, reverse=True)[: len(members)] if len(members) > 1 else [base]
        colors |= dict(zip(members, shades))
    return {v: colors[v] for v in ([TEACHER] if with_teacher else []) + variants}


def _save(figure: plt.Figure, options: PlotOptions, stem: str, dpi: int = 150) -> list[Path]:
    paths = []
    for fmt in options.formats:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, bbox_inches="tight", dpi=dpi)
        path = options.out / f"{options.prefix}{stem}.{fmt}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    plt.close(figure)
    return paths


def _attacks(store: Store, options: PlotOptions, default: tuple[str, ...] | None = None) -> list[str]:
    present = [a for a in ATTACKS if any(a in (run.metrics or {}).get("attacks", {}) for run in store.runs)]
    if not present:
        raise HarnessError(f"{store.name}: no finished run yet (nothing to draw)")
    if options.attacks:
        chosen = [a for a in options.attacks if a in present]
        if not chosen:
            raise HarnessError(f"{store.name}: no finished run was evaluated under {', '.join(options.attacks)}")
        return chosen
    return [a for a in (default or present) if a in present] or present


def _teacher(store: Store) -> dict[str, Any] | None:
    for run in store.finished():
        report = run.teacher_report()
        if report and report.get("dataset") == run.dataset:
            return report
    return None


def _students(store: Store) -> list[str]:
    """The students of the finished runs, in reading order."""
    return list(dict.fromkeys(run.student for run in store.finished()))


def _panel_name(run: Run, several_students: bool) -> str:
    """The run's variant, with its student when the figure holds several (never pooled across them)."""
    return f"{run.variant} · {run.student}" if several_students else run.variant


def _per_class_long(store: Store, attacks: list[str], with_teacher: bool) -> pd.DataFrame:
    """One line per (variant or teacher, student, seed, attack, class): the class accuracy in percent.
    The teacher's lines have no student (it is the same for all)."""
    names = store.class_names()
    rows = []
    sources: list[tuple[str, str | None, int, dict[str, Any]]] = [
        (run.variant, run.student, run.seed, run.metrics) for run in store.finished()]
    teacher = _teacher(store) if with_teacher else None
    if teacher:
        sources.insert(0, (TEACHER, None, 0, teacher))
    for who, student, seed, report in sources:
        for attack in attacks:
            result = report["attacks"].get(attack)
            for c, accuracy in enumerate(result["per_class"] if result else []):
                rows.append({"who": who, "student": student, "seed": seed, "attack": attack, "class": names[c],
                             "accuracy": accuracy})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- figures
def per_class(store: Store, options: PlotOptions) -> list[Path]:
    """Fig. 1: class-wise accuracy of the teacher and each method (mean ± sd over seeds), one row
    of panels per attack and one column per student."""
    attacks = _attacks(store, options)
    data = _per_class_long(store, attacks, with_teacher=True)
    colors = {k: v for k, v in palette(store, with_teacher=True).items() if k in set(data["who"])}
    students = _students(store)
    classes = len(store.class_names())
    width = max(6.0, 0.09 * classes * len(colors)) if classes <= MAX_LABELLED_CLASSES else 10.0
    figure, axes = plt.subplots(len(attacks), len(students), figsize=(width * len(students), 2.8 * len(attacks)),
                                squeeze=False, sharex=True, sharey=True, layout="constrained")
    legend_axis = axes[0, -1]
    for (row, attack), (column, student) in itertools.product(enumerate(attacks), enumerate(students)):
        axis = axes[row, column]
        panel = data[(data["attack"] == attack) & ((data["student"] == student) | (data["who"] == TEACHER))]
        if classes <= MAX_LABELLED_CLASSES:
            sns.barplot(panel, x="class", y="accuracy", hue="who", palette=colors, hue_order=list(colors),
                        errorbar="sd", err_kws={"linewidth": 0.8}, ax=axis, legend=axis is legend_axis)
        else:
            sns.lineplot(panel, x="class", y="accuracy", hue="who", palette=colors, hue_order=list(colors),
                         errorbar="sd", ax=axis, legend=axis is legend_axis, sort=False)
            axis.set_xticks(range(0, classes, 10))
        title = ATTACK_TITLES[attack] + (f" · {student}" if len(students) > 1 else "")
        axis.set(title=title, xlabel="", ylabel="accuracy (%)" if column == 0 else "", ylim=(0, 100))
        axis.grid(axis="y", alpha=0.3)
    for axis in axes[-1]:
        axis.tick_params(axis="x", rotation=30 if classes <= MAX_LABELLED_CLASSES else 0)
    sns.move_legend(legend_axis, "upper left", bbox_to_anchor=(1.01, 1), title=None, frameon=False)
    figure.suptitle(f"{store.name}: per-class accuracy")
    return _save(figure, options, "per-class")


def confusion(store: Store, options: PlotOptions) -> list[Path]:
    """Figs. 2, 9: row-normalised confusion matrices (percent of each true class), seeds summed, a
    matrix per variant and student."""
    names = store.class_names()
    paths = []
    teacher = _teacher(store)
    several_students = len(_students(store)) > 1
    for attack in _attacks(store, options):
        matrices: dict[str, np.ndarray] = {}
        if teacher and attack in teacher["attacks"]:
            matrices[TEACHER] = np.asarray(teacher["attacks"][attack]["confusion"], dtype=float)
        for run in store.finished():
            result = run.metrics["attacks"].get(attack)
            if result:
                counts = np.asarray(result["confusion"], dtype=float)
                name = _panel_name(run, several_students)
                matrices[name] = matrices.get(name, 0) + counts
        columns = min(4, len(matrices))
        rows = math.ceil(len(matrices) / columns)
        side = 3.2 if len(names) <= MAX_ANNOTATED_CLASSES else 4.0
        figure, axes = plt.subplots(rows, columns, figsize=(side * columns, side * rows), squeeze=False)
        for axis, (who, counts) in zip(axes.flat, matrices.items()):
            totals = counts.sum(axis=1, keepdims=True)
            percent = 100 * np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
            annotate = len(names) <= MAX_ANNOTATED_CLASSES
            sns.heatmap(percent, vmin=0, vmax=100, cmap="Blues", square=True, cbar=False, annot=annotate,
                        fmt=".0f", annot_kws={"fontsize": 6}, ax=axis,
                        xticklabels=names if annotate else False, yticklabels=names if annotate else False)
            axis.set_title(who, fontsize=9)
            axis.set(xlabel="predicted", ylabel="true")
            axis.tick_params(labelsize=6)
        for axis in list(axes.flat)[len(matrices):]:
            axis.set_visible(False)
        figure.suptitle(f"{store.name}: confusion under {ATTACK_TITLES[attack]} (% of each true class)")
        figure.tight_layout()
        paths += _save(figure, options, f"confusion-{attack}")
    return paths


def _logged_weights(run: Run) -> np.ndarray | None:
    """The class weights ``run`` logged, an epoch per row (None: it logs none)."""
    epochs = [line["class_weights"] for line in run.history if "class_weights" in line]
    return np.asarray(epochs, dtype=float) if epochs else None


def _uniform(logged: np.ndarray) -> bool:
    return bool(np.allclose(logged, logged[:, :1]))


def _equal_weight(run: Run) -> bool:
    """A run whose logged class weights never left uniform (FERD w/o reweighting, ARD: Fair-ARD at β = 0)."""
    logged = _logged_weights(run)
    return logged is not None and _uniform(logged)


def weights(store: Store, options: PlotOptions) -> list[Path]:
    """Fig. 4, from finished runs (a panel per student when there are several): the class weights
    each reweighting run logs per epoch (mean over seeds), as its method declares them
    (``Display.class_weights``): sampling weights p (FERD; dashed: uniform 1/C) or loss weights ω
    (Fair-ARD; dashed: 1) — and, a row per student that has both, per-class robustness of
    equal-weight runs (weights that never left uniform) vs reweighted ones."""
    names = store.class_names()
    weighted: dict[str, list[np.ndarray]] = {}
    loss_weights: set[str] = set()
    several_students = len(_students(store)) > 1
    for run in store.finished():  # a running cell's few epochs would cut every seed's line short
        logged = _logged_weights(run)
        if logged is not None and not _uniform(logged):
            panel = _panel_name(run, several_students)
            weighted.setdefault(panel, []).append(logged)
            if method_facts.display(run.method).class_weights == "loss":
                loss_weights.add(panel)
    if not weighted:
        raise HarnessError(f"{store.name}: no finished run logged class weights (FERD's history 'class_weights')")
    attack = _attacks(store, options, ("pgd20",))[0]
    comparisons: dict[str, list[Run]] = {}
    for student in _students(store):
        runs = [run for run in store.finished() if run.student == student
                and (_equal_weight(run) or _panel_name(run, several_students) in weighted)]
        if any(_equal_weight(run) for run in runs) and len({run.variant for run in runs}) > 1:
            comparisons[student] = runs
    columns = min(len(weighted), WEIGHT_PANELS_PER_ROW)
    rows = -(-len(weighted) // columns)
    figure = plt.figure(figsize=(5.5 * columns, 3.6 * (rows + len(comparisons))), layout="constrained")
    grid = figure.add_gridspec(rows + len(comparisons), columns)
    weight_axes = [figure.add_subplot(grid[i // columns, i % columns]) for i in range(len(weighted))]
    class_colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    for axis, (variant, runs) in zip(weight_axes, weighted.items()):
        shortest = min(len(w) for w in runs)
        mean = np.mean([w[:shortest] for w in runs], axis=0)
        epochs = np.arange(1, shortest + 1)
        for c in range(len(names)):
            axis.plot(epochs, mean[:, c], color=class_colors[c], label=names[c], linewidth=1.2)
        if variant in loss_weights:
            axis.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
            axis.set(title=f"{variant}: class loss weights ω", xlabel="epoch", ylabel="loss weight")
        else:
            axis.axhline(1 / len(names), color="black", linestyle="--", linewidth=0.8)
            axis.set(title=f"{variant}: class weights p", xlabel="epoch", ylabel="sampling weight")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(names) <= MAX_LABELLED_CLASSES:
        weight_axes[columns - 1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    for row, (student, runs) in enumerate(comparisons.items(), start=rows):
        data = _per_class_long(Store(store.name, runs), [attack], with_teacher=False)
        colors = {k: v for k, v in palette(store).items() if k in set(data["who"])}
        axis = figure.add_subplot(grid[row, :])  # a full row: one group of bars per class
        sns.barplot(data, x="class", y="accuracy", hue="who", palette=colors, hue_order=list(colors), errorbar="sd",
                    ax=axis)
        title = f"equal vs reweighted: {ATTACK_TITLES[attack]}" + (f" · {student}" if several_students else "")
        axis.set(title=title, xlabel="", ylabel="accuracy (%)")
        axis.tick_params(axis="x", rotation=30)
        sns.move_legend(axis, "upper left", bbox_to_anchor=(1.01, 1), title=None, frameon=False, fontsize=7)
    return _save(figure, options, "weights")


def _axis_name(store: Store, param: str) -> str:
    candidates = [param] if "." in param else [f"params.{param}", f"schedule.{param}", f"threat.{param}"]
    for candidate in candidates:
        if any(candidate in run.axes for run in store.runs):
            return candidate
    raise HarnessError(f"--param: '{param}' does not vary in {store.name} (it varies: "
                       f"{', '.join(sorted({a for r in store.runs for a in r.axes})) or 'nothing'})")


def gamma(store: Store, options: PlotOptions) -> list[Path]:
    """Fig. 5: Avg and Worst accuracy against γ (or ``--param``), a line per attack and method, a row
    of panels per student."""
    axis_name = _axis_name(store, options.param)
    attacks = _attacks(store, options, ("clean", "pgd20"))
    rows = []
    for run in store.finished():
        if axis_name not in run.axes:
            continue
        for attack in attacks:
            result = run.metrics["attacks"].get(attack)
            if result:
                rows += [{"x": run.axes[axis_name], "method": run.label(without=(axis_name,)),
                          "student": run.student, "attack": ATTACK_TITLES[attack],
                          "metric": metric, "accuracy": result[key]}
                         for metric, key in (("Avg", "avg"), ("Worst", "worst"))]
    data = pd.DataFrame(rows)
    if data.empty:
        raise HarnessError(f"{store.name}: no finished run varies {axis_name}")
    if not pd.api.types.is_numeric_dtype(data["x"]):
        data["x"] = data["x"].map(value_text)
    students = list(dict.fromkeys(data["student"]))
    figure, axes = plt.subplots(len(students), 2, figsize=(10, 3.6 * len(students)), squeeze=False)
    colors = palette(store, label=lambda run: run.label(without=(axis_name,)))  # a line spans the swept values
    lines = list(dict.fromkeys(data["method"]))
    for (row, student), (column, metric) in itertools.product(enumerate(students), enumerate(("Avg", "Worst"))):
        axis = axes[row, column]
        panel = data[(data["metric"] == metric) & (data["student"] == student)]
        sns.lineplot(panel, x="x", y="accuracy", hue="method", style="attack", markers=True, errorbar="sd",
                     palette={line: colors.get(line, TEACHER_COLOR) for line in lines}, ax=axis,
                     legend=column == 1)
        axis.set(title=metric + (f" · {student}" if len(students) > 1 else ""),
                 xlabel=axis_name.rsplit(".", 1)[-1].replace("gamma", "γ"), ylabel="accuracy (%)")
        axis.grid(alpha=0.3)
        _label_runs_per_point(axis, panel)
        if column == 1:
            sns.move_legend(axis, "upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=7)
    figure.suptitle(f"{store.name}: accuracy against {axis_name.rsplit('.', 1)[-1]} (mean ± sd over n seeds)")
    figure.tight_layout()
    # gamma.png for Fig. 5; another parameter gets its own name, never a figure kind's (epochs.png is Fig. 8)
    return _save(figure, options, "gamma" if options.param == "gamma" else f"sweep-{options.param.rsplit('.', 1)[-1]}")


def _label_runs_per_point(axis: plt.Axes, panel: pd.DataFrame) -> None:
    """Tick labels under each swept value carry n, the finished runs (seeds) behind its points — a
    range when lines differ — so a point of one seed is never read as a mean of three."""
    per_line = panel.groupby(["x", "method", "attack"]).size().groupby(level="x").agg(["min", "max"])
    text = {x: f"{value_text(x)}\nn={low}" + (f"–{high}" if high > low else "")
            for x, (low, high) in per_line.iterrows()}
    if pd.api.types.is_numeric_dtype(panel["x"]):
        axis.set_xticks(list(text), labels=list(text.values()))
    else:
        axis.figure.canvas.draw()
        ticks = [(tick, label.get_text()) for tick, label in zip(axis.get_xticks(), axis.get_xticklabels())]
        axis.set_xticks([tick for tick, _ in ticks], labels=[text.get(label, label) for _, label in ticks])


PROBES = {"probe_clean": ("Clean", "Avg"), "probe_pgd20": ("PGD-20", "Avg"),
          "probe_clean_worst": ("Clean", "Worst"), "probe_pgd20_worst": ("PGD-20", "Worst")}


def epochs(store: Store, options: PlotOptions) -> list[Path]:
    """Fig. 8: the held-out probes (stratified training-split subset) against the epoch, a row of
    panels per student (never pooled across them)."""
    rows = []
    for run in store.runs:
        for line in run.history:
            rows += [{"epoch": line["epoch"], "variant": run.variant, "student": run.student, "seed": run.seed,
                      "attack": attack, "metric": metric, "accuracy": line[key]}
                     for key, (attack, metric) in PROBES.items() if line.get(key) is not None]
    data = pd.DataFrame(rows)
    if data.empty:
        raise HarnessError(f"{store.name}: no probe in any history.jsonl yet (schedule.history_every)")
    colors = {k: v for k, v in palette(store).items() if k in set(data["variant"])}
    students = list(dict.fromkeys(data["student"]))
    figure, axes = plt.subplots(len(students), 2, figsize=(11, 3.8 * len(students)), squeeze=False)
    for (row, student), (column, metric) in itertools.product(enumerate(students), enumerate(("Avg", "Worst"))):
        axis = axes[row, column]
        panel = data[(data["metric"] == metric) & (data["student"] == student)]
        sns.lineplot(panel, x="epoch", y="accuracy", hue="variant", style="attack", palette=colors,
                     hue_order=[v for v in colors if v in set(panel["variant"])], markers=True, errorbar="sd",
                     ax=axis, legend=column == 1)
        title = f"{metric} (held-out probe)" + (f" · {student}" if len(students) > 1 else "")
        axis.set(title=title, ylabel="accuracy (%)")
        axis.set_ylim(bottom=0)  # a mean − sd band below 0 % is not an accuracy
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if column == 1:
            sns.move_legend(axis, "upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=7)
    figure.suptitle(f"{store.name}: accuracy during training (mean ± sd over seeds)")
    figure.tight_layout()
    return _save(figure, options, "epochs")


def _gallery(run: Run) -> dict[str, np.ndarray] | None:
    """``synthetic.npz`` of a run (the trainer writes it at the end of a cell), or None when the run
    has none (runs made before it existed; figures only read the store, they never rebuild a run)."""
    path = run.run_dir / "synthetic.npz"
    if not path.exists():
        return None
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _mosaic(images: np.ndarray, labels: np.ndarray, classes: list[int], per_row: int) -> np.ndarray:
    """Rows = ``classes``, ``per_row`` images each (blank where the teacher gave fewer), as H×W×C."""
    _, channels, height, width = images.shape
    canvas = np.ones((len(classes) * (height + 2), per_row * (width + 2), channels), dtype=np.float32)
    for r, c in enumerate(classes):
        for k, image in enumerate(images[labels == c][:per_row]):
            canvas[r * (height + 2) + 1: r * (height + 2) + 1 + height,
                   k * (width + 2) + 1: k * (width + 2) + 1 + width] = image.transpose(1, 2, 0) / 255
    return canvas


def samples(store: Store, options: PlotOptions) -> list[Path]:
    """Figs. 6–7: synthetic images of each method (first seed), a row per class the teacher assigns."""
    names = store.class_names()
    galleries: dict[str, dict[str, np.ndarray]] = {}
    for run in store.finished():
        if run.variant not in galleries:
            gallery = _gallery(run)
            if gallery is not None:
                galleries[run.variant] = gallery
    if not galleries:
        raise HarnessError(f"{store.name}: no run has synthetic.npz (written at the end of a cell)")
    per_row = max(int(np.bincount(g["teacher_labels"], minlength=len(names)).max()) for g in galleries.values())
    per_row = max(per_row, 1)
    columns = min(4, len(galleries))
    rows = math.ceil(len(galleries) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(0.45 * per_row * columns + 1.6 * columns,
                                                        0.5 * min(len(names), GALLERY_CLASSES) * rows + 0.6),
                                squeeze=False)
    for axis, (variant, gallery) in zip(axes.flat, galleries.items()):
        counts = np.bincount(gallery["teacher_labels"], minlength=len(names))
        classes = list(range(len(names))) if len(names) <= GALLERY_CLASSES else \
            sorted(np.argsort(-counts, kind="stable")[:GALLERY_CLASSES].tolist())
        canvas = _mosaic(gallery["images"], gallery["teacher_labels"], classes, per_row)
        axis.imshow(canvas.squeeze(-1) if canvas.shape[-1] == 1 else canvas, cmap="gray", vmin=0, vmax=1,
                    interpolation="nearest")
        height = gallery["images"].shape[2] + 2
        axis.set_yticks([height * (r + 0.5) for r in range(len(classes))], [names[c] for c in classes], fontsize=7)
        axis.set_xticks([])
        share = 100 * gallery["draw_histogram"] / max(1, gallery["draw_histogram"].sum())
        axis.set_title(f"{variant}\nclass shares of the pool {share.min():.0f}–{share.max():.0f} %", fontsize=8)
    for axis in list(axes.flat)[len(galleries):]:
        axis.set_visible(False)
    figure.suptitle(f"{store.name}: synthetic images by teacher class")
    figure.tight_layout()
    return _save(figure, options, "samples", dpi=100)  # the images are tiny: more pixels add nothing


KINDS: dict[str, Figure] = {"per-class": per_class, "confusion": confusion, "weights": weights, "gamma": gamma,
                            "epochs": epochs, "samples": samples}
assert tuple(KINDS) == PLOT_KINDS, "harness.report.names.PLOT_KINDS lists the kinds the CLI accepts"


def plot(kind: str, store: Store, options: PlotOptions) -> list[Path]:
    """Draw ``kind`` (see :data:`KINDS`); returns the files written."""
    if kind not in KINDS:
        raise HarnessError(f"plot: unknown kind '{kind}' (choose from {', '.join(KINDS)})")
    return KINDS[kind](store, options)


def plot_each(kinds: Sequence[str], store: Store, options: PlotOptions) -> tuple[list[Path], dict[str, str]]:
    """Draw every kind the store's rows can give: the files written, and why each other kind was not
    (e.g. ``weights`` for rows that log no class weights)."""
    paths: list[Path] = []
    skipped: dict[str, str] = {}
    for kind in kinds:
        try:
            paths += plot(kind, store, options)
        except HarnessError as error:
            skipped[kind] = str(error)
    return paths, skipped
