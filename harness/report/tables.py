"""The paper's tables from the store (Tables 1–3 and 6–9), as Markdown, booktabs LaTeX or CSV.

A table is built in two steps: :func:`build_table` groups the runs of one layout into rows
(one per student × method variant, aggregated over seeds: mean, sample std, n) and ranks each
column within a student block (best **bold**, second underlined; ↑ for accuracies, ↓ for
NSD); :func:`render` writes it. A row with missing, failed or unfinished runs keeps its
place and is marked †, with a footnote that counts what is missing; a cell averaged over
fewer runs than its row (an attack some runs lack, or NSD undefined) is marked ‡.

Layouts (``--layout``, else chosen from what the experiment contains by :func:`choose_layout`):
``main`` (Tables 1, 2, 5: attack × {Avg, Worst, NSD}; Worst-10 % for ≥ 100 classes),
``ablation`` (Table 3: a method and the presets it declares as its ablations), ``dfkd-vs-dfrd``
(Table 8: each method without and with adversarial distillation, the DFRD row with its change in
parentheses), and the sweep views methods declare (``Method.display.views``; FERD's
``reweighting`` Table 6, ``lambdas`` Table 7, ``layer`` Table 9, ``gamma`` the numbers of Fig. 5).
Row titles, column symbols and value titles come from the methods' declarations too.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.report.collect import Run, Store, value_text
from harness.report.compare import Difference, difference
from harness.report import methods as method_facts
from harness.report.names import ATTACK_TITLES, ATTACKS, METRIC_TITLES, METRICS
LOWER_IS_BETTER = frozenset({"nsd"})
TITLES = {
    "main": "Robust accuracy and robust fairness per attack (Tables 1, 2, 5)",
    "ablation": "Ablation (Table 3)",
    "dfkd-vs-dfrd": "Data-free KD vs data-free robust distillation; DFRD's change in parentheses (Table 8)",
}  # plus the sweep views the methods declare (harness.report.methods.views)
Format = Literal["md", "tex", "csv"]
DFKD_AXIS = "schedule.adversarial"


# --------------------------------------------------------------------------- layout choice
def _swept(store: Store, prefix: str) -> list[str]:
    return list(dict.fromkeys(axis for run in store.runs for axis in run.axes if axis.startswith(prefix)))


def _ablation_runs(store: Store) -> list[Run]:
    titles = method_facts.ablation_titles()
    return [run for run in store.runs if run.method in titles]


def choose_layout(store: Store) -> str:
    """The layout an experiment was made for, from the axes it varies and the methods it runs: an
    ablation when it runs a preset a method declares as one of its ablations, else a declared view
    whose hyper-parameter it sweeps, else the main table."""
    if _swept(store, DFKD_AXIS):
        return "dfkd-vs-dfrd"
    if any(run.method != run.config.get("plugin") for run in _ablation_runs(store)):
        return "ablation"
    for layout, (param, _) in method_facts.views().items():
        if _swept(store, f"params.{param}"):
            return layout
    return "main"


def layouts() -> dict[str, str]:
    """Every layout ``table`` knows, with its title: the generic ones and the methods' views."""
    return TITLES | {name: title for name, (_, title) in method_facts.views().items()}


def _layout_axes(store: Store, layout: str) -> list[str]:
    """The axes a sweep layout shows as columns of their own."""
    views = method_facts.views()
    prefix = DFKD_AXIS if layout == "dfkd-vs-dfrd" else f"params.{views[layout][0]}" if layout in views else None
    if prefix is None:
        return []
    axes = _swept(store, prefix)
    if not axes:
        raise HarnessError(f"{store.name}: layout '{layout}' needs runs that vary {prefix}"
                           f"{'*' if prefix.endswith('_') else ''}; this experiment does not")
    return axes


# --------------------------------------------------------------------------- rows
@dataclass
class Cell:
    mean: float = math.nan
    std: float = math.nan
    n: int = 0
    rank: int = 0  # 1 best, 2 second, 0 neither
    change: float | None = None  # Table 8: this row minus its reference row
    versus: Difference | None = None  # ``--vs ROW``: this row minus ROW, with its interval


@dataclass
class Row:
    block: tuple[str, ...]  # rows are ranked within their block (dataset, student[, DFKD/DFRD])
    labels: tuple[str, ...]  # the index values shown
    runs: list[Run]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    reference: Row | None = None

    @property
    def done(self) -> int:
        return sum(run.done for run in self.runs)

    @property
    def complete(self) -> bool:
        return self.done == len(self.runs)

    def missing_note(self) -> str:
        states = Counter(run.state for run in self.runs if not run.done)
        detail = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        return f"{' / '.join(self.labels)}: {self.done} of {len(self.runs)} runs finished ({detail})"


@dataclass
class Table:
    layout: str
    title: str
    index: list[str]  # names of the label columns
    columns: list[tuple[str, str]]  # (attack, metric)
    rows: list[Row]
    attack_titles: dict[str, str]
    show_n: bool
    cost: pd.DataFrame | None = None  # per row: minutes, teacher queries
    versus: str | None = None  # the row every other row of its block is compared with (``--vs``)


def _row_labels(store: Store, layout: str, run: Run, axes: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(block, labels) of a run's row in ``layout``."""
    many_datasets = len({r.dataset for r in store.runs}) > 1
    block = (run.dataset, run.student) if many_datasets else (run.student,)
    if layout == "ablation":
        name = method_facts.ablation_titles()[run.method] + run.label()[len(run.method):]
        return block, (*block, name)
    if layout == "dfkd-vs-dfrd":
        kind = "DFRD" if run.axes.get(DFKD_AXIS, True) else "DFKD"
        return (*block, kind), (*block, run.label(without=(DFKD_AXIS,)), kind)
    values = []
    for axis in axes:
        value = run.axes.get(axis)
        values.append(method_facts.value_title(axis, value) or value_text(value))
    return block, (*block, run.label(without=tuple(axes)), *values)


def _layout_runs(store: Store, layout: str, axes: list[str]) -> list[Run]:
    if layout == "ablation":
        return _ablation_runs(store)
    if axes:
        return [run for run in store.runs if any(axis in run.axes for axis in axes)]
    return list(store.runs)


def _group_rows(store: Store, layout: str, axes: list[str]) -> list[Row]:
    rows: dict[tuple[str, ...], Row] = {}
    for run in _layout_runs(store, layout, axes):
        block, labels = _row_labels(store, layout, run, axes)
        rows.setdefault(labels, Row(block, labels, [])).runs.append(run)
    ordered = list(rows.values())
    if layout == "dfkd-vs-dfrd":  # each method's DFKD row, then its DFRD row with the change
        methods = list(dict.fromkeys(row.labels[:-1] for row in ordered))
        ordered.sort(key=lambda row: (methods.index(row.labels[:-1]), row.labels[-1] == "DFRD"))
        for row in ordered:
            if row.labels[-1] == "DFRD":
                row.reference = rows.get((*row.labels[:-1], "DFKD"))
    else:  # block by block, in the experiment's order
        blocks = list(dict.fromkeys(row.block for row in ordered))
        ordered.sort(key=lambda row: blocks.index(row.block))
    return ordered


# --------------------------------------------------------------------------- statistics and ranks
def _fill_cells(rows: list[Row], scores: pd.DataFrame, columns: list[tuple[str, str]]) -> None:
    for row in rows:
        dirs = {str(run.run_dir) for run in row.runs if run.done}
        mine = scores[scores["run_dir"].isin(dirs)]
        for attack, metric in columns:
            values = mine.loc[mine["attack"] == attack, metric].dropna().to_numpy(dtype=float)
            row.cells[(attack, metric)] = Cell(
                mean=float(values.mean()) if len(values) else math.nan,
                std=float(values.std(ddof=1)) if len(values) > 1 else math.nan, n=len(values))
    for row in rows:
        if row.reference is not None:
            for key, cell in row.cells.items():
                base = row.reference.cells[key].mean
                cell.change = cell.mean - base if not (math.isnan(cell.mean) or math.isnan(base)) else None


def _row_name(row: Row) -> str:
    return " / ".join(row.labels[len(row.block):])


def _compare_with(rows: list[Row], name: str, columns: list[tuple[str, str]], store_name: str) -> None:
    """``--vs``: each row's difference from the row called ``name`` in its block, with its interval."""
    found = False
    for block in dict.fromkeys(row.block for row in rows):
        members = [row for row in rows if row.block == block]
        matches = [row for row in members if name in (_row_name(row), row.labels[len(block)])]
        if len(matches) > 1:
            raise HarnessError(f"--vs: '{name}' names {len(matches)} rows of {' / '.join(block)}; name one of: "
                               f"{'; '.join(_row_name(row) for row in matches)}")
        if not matches:
            continue
        found, reference = True, matches[0]
        for row in members:
            if row is reference:
                continue
            for attack, metric in columns:
                row.cells[(attack, metric)].versus = difference(
                    [r for r in row.runs if r.done], [r for r in reference.runs if r.done], attack, metric)
    if not found:
        names = list(dict.fromkeys(_row_name(row) for row in rows))
        raise HarnessError(f"--vs: {store_name} has no row '{name}'; rows: {'; '.join(names)}")


def _decimals(metric: str) -> int:
    return 3 if metric == "nsd" else 2


def _rank(rows: list[Row], columns: list[tuple[str, str]]) -> None:
    """Best = 1 and second best = 2 within each block, compared as displayed (ties share)."""
    for block in dict.fromkeys(row.block for row in rows):
        members = [row for row in rows if row.block == block]
        for attack, metric in columns:
            shown = {id(row): round(row.cells[(attack, metric)].mean, _decimals(metric)) for row in members
                     if not math.isnan(row.cells[(attack, metric)].mean)}
            if len(shown) < 2:
                continue
            distinct = sorted(set(shown.values()), reverse=metric not in LOWER_IS_BETTER)
            for row in members:
                value = shown.get(id(row))
                if value is not None and value in distinct[:2]:
                    row.cells[(attack, metric)].rank = distinct.index(value) + 1


def _metrics_for(metric: str | None, scores: pd.DataFrame, layout: str) -> list[str]:
    if metric == "all":
        return list(METRICS)
    if metric is not None:
        return [metric]
    many_classes = len(scores) and (scores["classes"] >= 100).all()
    worst = "worst10" if many_classes else "worst"
    return ["avg", worst, "nsd"] if layout in ("main", "dfkd-vs-dfrd") else ["avg", worst]


def _attacks_for(attacks: list[str] | None, scores: pd.DataFrame, layout: str, name: str) -> list[str]:
    present = [a for a in ATTACKS if a in set(scores["attack"])]
    if attacks:
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise HarnessError(f"--attacks: unknown attack '{unknown[0]}' (choose from {', '.join(ATTACKS)})")
        chosen = [a for a in attacks if a in present]
        if not chosen:
            raise HarnessError(f"{name}: no finished run was evaluated under {', '.join(attacks)}")
        return chosen
    if layout not in ("main", "dfkd-vs-dfrd") and {"clean", "pgd20"} <= set(present):
        return ["clean", "pgd20"]
    return present


def _cost(rows: list[Row]) -> pd.DataFrame:
    """Mean wall time (minutes) and teacher queries (forward + backward images) per row."""
    data = []
    for row in rows:
        costs = [run.cost for run in row.runs if run.done and run.cost]
        minutes = [c["total_seconds"] / 60 for c in costs]
        queries = [c["teacher_forward_images"] + c["teacher_backward_images"] for c in costs]
        data.append({"minutes": np.mean(minutes) if minutes else math.nan,
                     "teacher_queries": np.mean(queries) if queries else math.nan})
    return pd.DataFrame(data)


def build_table(store: Store, layout: str | None = None, metric: str | None = None,
                attacks: list[str] | None = None, cost: bool = False, versus: str | None = None) -> Table:
    """The table of ``layout`` (default: :func:`choose_layout`) for the runs of ``store``; with
    ``versus``, every row marked where its difference from that row is established (harness.report.compare)."""
    layout = layout or choose_layout(store)
    known = layouts()
    if layout not in known:
        raise HarnessError(f"--layout: unknown layout '{layout}' (choose from {', '.join(known)})")
    if metric is not None and metric not in (*METRICS, "all"):
        raise HarnessError(f"--metric: unknown metric '{metric}' (choose from {', '.join(METRICS)}, all)")
    axes = _layout_axes(store, layout)
    rows = _group_rows(store, layout, axes)
    if not rows:
        raise HarnessError(f"{store.name}: no runs for layout '{layout}' "
                           f"(methods {', '.join(method_facts.ablation_titles())})")
    scores = store.scores()
    if scores.empty:
        raise HarnessError(f"{store.name}: no finished run yet (nothing to tabulate)")
    columns = [(a, m) for a in _attacks_for(attacks, scores, layout, store.name)
               for m in _metrics_for(metric, scores, layout)]
    _fill_cells(rows, scores, columns)
    _rank(rows, columns)
    if versus is not None:
        _compare_with(rows, versus, columns, store.name)
    titles = dict(ATTACK_TITLES)
    if (scores.loc[scores["attack"] == "aa", "aa_version"] == "fast").any():
        titles["aa"] = "AA (fast)"
    many_datasets = len({r.dataset for r in store.runs}) > 1
    index = (["Dataset"] if many_datasets else []) + ["Student", "Method"]
    index += ["Distillation"] if layout == "dfkd-vs-dfrd" else [method_facts.param_symbol(a) for a in axes]
    return Table(layout, f"{store.name}: {known[layout]}", index, columns, rows, titles,
                 show_n=any(len(row.runs) > 1 or not row.complete for row in rows),
                 cost=_cost(rows) if cost else None, versus=versus)


# --------------------------------------------------------------------------- rendering
TEX_SYMBOLS = {"±": r"$\pm$", "∞": r"$_\infty$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "†": r"$^\dagger$",
               "‡": r"$^\ddagger$", "γ": r"$\gamma$", "λ₁": r"$\lambda_1$", "λ₂": r"$\lambda_2$",
               "λ_adv": r"$\lambda_{adv}$", "λ_bn": r"$\lambda_{bn}$", "λ_oh": r"$\lambda_{oh}$",
               "λ_uni": r"$\lambda_{uni}$", "—": "--", "▲": r"$^{\blacktriangle}$",
               "▼": r"$^{\blacktriangledown}$"}
TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    """Escape LaTeX specials, then write the table's symbols in math mode."""
    text = "".join(TEX_ESCAPES.get(ch, ch) for ch in text)
    for symbol in sorted(TEX_SYMBOLS, key=len, reverse=True):
        text = text.replace(symbol.replace("_", r"\_"), TEX_SYMBOLS[symbol])
    return text


def _cell_text(cell: Cell, metric: str, row: Row) -> str:
    if math.isnan(cell.mean):
        return "—"
    places = _decimals(metric)
    text = f"{cell.mean:.{places}f}"
    if cell.n > 1:
        text += f" ± {cell.std:.{places}f}"
    if cell.change is not None:
        text += f" ({cell.change:+.{places}f})"
    if cell.n < row.done:
        text += " ‡"
    if cell.versus is not None and cell.versus.established:
        text += " ▲" if cell.versus.sign > 0 else " ▼"
    return text


def _count_text(count: float) -> str:
    if math.isnan(count):
        return "—"
    return f"{count / 1e6:.2f}M" if count >= 1e5 else f"{count / 1e3:.1f}k"


def _wide(table: Table, fmt: Format) -> pd.DataFrame:
    marks = {"md": ("**{}**", "<u>{}</u>"), "tex": (r"\textbf{{{}}}", r"\underline{{{}}}")}[fmt]
    escape = _tex if fmt == "tex" else str
    arrows = {m: "↓" if m in LOWER_IS_BETTER else "↑" for m in METRICS}
    records = []
    for position, row in enumerate(table.rows):
        labels = list(row.labels)
        labels[-1] += "" if row.complete else " †"
        record = {("", name): escape(label) for name, label in zip(table.index, labels)}
        if table.show_n:
            record[("", "n")] = f"{row.done}" if row.complete else f"{row.done}/{len(row.runs)}"
        for attack, metric in table.columns:
            cell = row.cells[(attack, metric)]
            text = escape(_cell_text(cell, metric, row))
            if cell.rank:
                text = marks[cell.rank - 1].format(text)
            record[(table.attack_titles[attack], f"{METRIC_TITLES[metric]} {arrows[metric]}")] = text
        if table.cost is not None:
            minutes, queries = table.cost.iloc[position]
            record[("Cost", "min")] = "—" if math.isnan(minutes) else f"{minutes:.1f}"
            record[("Cost", "teacher queries")] = _count_text(queries)
        records.append(record)
    frame = pd.DataFrame(records)
    frame.columns = pd.MultiIndex.from_tuples(
        [(escape(a), escape(m)) for a, m in frame.columns]) if fmt == "tex" else frame.columns
    return frame


def _footnotes(table: Table) -> list[str]:
    notes = [f"† {row.missing_note()}" for row in table.rows if not row.complete]
    if any(cell.n < row.done for row in table.rows for cell in row.cells.values() if not math.isnan(cell.mean)):
        notes.append("‡ over fewer runs than the row: an attack some runs were not evaluated under, "
                     "or NSD undefined (every class at 0 %)")
    if any(row.done > 1 for row in table.rows):
        notes.append("mean ± sample std over seeds; n = finished runs")
    if table.versus is not None:
        notes.append(f"▲ / ▼ above / below {table.versus} of the same student, established at 95 % (Student-t "
                     "over seeds with a bootstrap of each class's test images; `harness compare` gives the intervals)")
    return notes


def _markdown(table: Table) -> str:
    frame = _wide(table, "md")
    frame.columns = [f"{a} {m}".strip() for a, m in frame.columns]
    labels = len(table.index) + table.show_n
    align = ["left"] * labels + ["right"] * (len(frame.columns) - labels)
    body = frame.to_markdown(index=False, disable_numparse=True, colalign=align)
    notes = "".join(f"\n{note}  " for note in _footnotes(table))
    return f"**{table.title}**\n\n{body}\n{notes}\n"


def _latex(table: Table) -> str:
    frame = _wide(table, "tex")
    groups = len(table.index) + table.show_n
    spec = "l" * groups + "c" * (len(frame.columns) - groups)
    body = frame.to_latex(index=False, escape=False, multicolumn=True, multicolumn_format="c", column_format=spec)
    notes = "".join(f"\\par\\footnotesize {_tex(note)}\n" for note in _footnotes(table))
    return ("% needs \\usepackage{amssymb,booktabs,graphicx}\n\\begin{table}[t]\n\\centering\n"
            f"\\caption{{{_tex(table.title)}}}\n\\resizebox{{\\linewidth}}{{!}}{{%\n{body}}}\n{notes}\\end{{table}}\n")


def _csv(table: Table) -> str:
    """Tidy: one line per row × attack × metric, with mean, std, n, the row's runs and the rank."""
    records = []
    for position, row in enumerate(table.rows):
        base = dict(zip(table.index, row.labels)) | {"runs_finished": row.done, "runs_expected": len(row.runs)}
        if table.cost is not None:
            base |= table.cost.iloc[position].to_dict()
        for (attack, metric), cell in row.cells.items():
            versus = {} if table.versus is None else {
                "vs_difference": cell.versus.estimate if cell.versus else None,
                "vs_low": cell.versus.low if cell.versus else None,
                "vs_high": cell.versus.high if cell.versus else None}
            records.append(base | {"attack": attack, "metric": metric, "mean": cell.mean, "std": cell.std,
                                   "n": cell.n, "rank": cell.rank, "change": cell.change} | versus)
    return pd.DataFrame(records).to_csv(index=False, float_format="%.6g")


def render(table: Table, fmt: Format = "md") -> str:
    """``table`` as Markdown (bold / <u>underline</u>), booktabs LaTeX or tidy CSV."""
    return {"md": _markdown, "tex": _latex, "csv": _csv}[fmt](table)
