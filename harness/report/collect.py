"""The store as pandas frames: all that tables and figures read (they never retrain or re-attack).

An experiment is read either from its YAML file — the expected cells, so that missing, failed
and running cells are visible — or by name from ``<results>/<name>/`` (whatever runs are
there). Each run gets a *variant* label: its method name, plus the values of the settings and
hyper-parameters that vary across the experiment (e.g. ``ferd (gamma=0.3)``), so that cells
differing only in their seed are aggregated together and nothing else is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.config import SAFE_NAME, CellSettings, load_experiment
from harness.errors import HarnessError
from harness.report import methods as method_facts
from harness.store import cell_state

SCORES = ("avg", "worst", "worst10", "nsd")
LABEL_SECTIONS = ("teacher", "schedule", "threat", "eval", "params")
# top-level cell settings that label a variant, with the default a config.json leaves out
LABEL_SETTINGS = {f.name: f.default for f in fields(CellSettings) if f.name in ("precision", "compile")}
NOT_LABELS = {"teacher.sha256"}  # follows the checkpoint; never a variant of its own


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise HarnessError(f"{path}: not valid JSON ({error})") from None


@dataclass(frozen=True)
class Run:
    """One cell of the experiment and what its run folder holds."""

    run_dir: Path
    config: dict[str, Any]
    state: str
    axes: dict[str, Any]  # the experiment's varying settings/hyper-parameters and this run's values

    @property
    def variant(self) -> str:
        """``method`` or ``method (axis=value, …)``: what distinguishes the cell except its seed."""
        return self.label()

    def label(self, without: tuple[str, ...] = ()) -> str:
        """The variant label leaving out the ``without`` axes (shown in columns of their own)."""
        parts = [axis_text(axis, value) for axis, value in self.axes.items() if axis not in without]
        return f"{self.method} ({', '.join(parts)})" if parts else self.method

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def dataset(self) -> str:
        return self.config["dataset"]

    @property
    def student(self) -> str:
        return self.config["student"]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def done(self) -> bool:
        return self.state == "done"

    @cached_property
    def metrics(self) -> dict[str, Any] | None:
        return _read_json(self.run_dir / "metrics.json") if self.done else None

    @cached_property
    def cost(self) -> dict[str, Any] | None:
        return _read_json(self.run_dir / "cost.json")

    @cached_property
    def history(self) -> list[dict[str, Any]]:
        try:
            lines = (self.run_dir / "history.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        parsed = []
        for line in filter(str.strip, lines):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:  # a damaged history (``status`` reports it): the lines before it
                break
        return parsed

    def teacher_report(self) -> dict[str, Any] | None:
        """The teacher's evaluation (``report.json`` beside its checkpoint), if it can be found."""
        path = self.config.get("teacher_path")
        return _read_json(Path(path).parent / "report.json") if path else None


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short(axis: str) -> str:
    return "teacher" if axis == "teacher.arch" else axis.rsplit(".", 1)[-1]


def axis_text(axis: str, value: Any) -> str:
    """``gamma=0.3``; ``DFKD``/``DFRD`` for ``schedule.adversarial``."""
    if axis == "schedule.adversarial":
        return "DFRD" if value else "DFKD"
    return f"{_short(axis)}={value_text(value)}"


def varying_axes(configs: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
    """The setting axes that vary among the configs of some one method, and per method the
    hyper-parameters that vary among that method's configs (dotted names such as ``schedule.epochs``,
    ``params.gamma``). A setting that differs only between methods — a method's own schedule
    defaults, such as DFHL's learning-rate schedule — is part of the method, not a variant."""
    frame = pd.DataFrame([_flat(c) for c in configs]).map(lambda v: json.dumps(v) if isinstance(v, list) else v)
    methods = pd.Series([c["method"] for c in configs])
    groups = {method: frame[(methods == method).to_numpy()] for method in dict.fromkeys(methods)}
    varying = {method: [c for c in frame.columns if group[c].nunique(dropna=False) > 1]
               for method, group in groups.items()}
    settings = [c for c in frame.columns if not c.startswith("params.")
                and any(c in columns for columns in varying.values())]
    params = {method: [c for c in columns if c.startswith("params.")] for method, columns in varying.items()}
    return settings, params


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    flat = pd.json_normalize({k: config.get(k) for k in LABEL_SECTIONS}, sep=".").iloc[0].to_dict()
    flat |= {name: config.get(name, default) for name, default in LABEL_SETTINGS.items()}
    return {k: v for k, v in flat.items() if k not in NOT_LABELS}


def run_axes(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every config, its values of the axes that vary (see :func:`varying_axes`)."""
    settings, params = varying_axes(configs)
    axes = []
    for config in configs:
        flat = _flat(config)
        axes.append({axis: flat.get(axis) for axis in settings + params[config["method"]]})
    return axes


def _method_rank(method: str) -> tuple[int, int, str]:
    return method_facts.order_key(method)


@dataclass(frozen=True)
class Store:
    """The runs of one experiment, in grid order. ``view`` is the YAML file's stem when the store was
    opened from a file that names the experiment of another file beside it (``fmnist_ablation.yaml``
    says ``name: fmnist_main``: it is a view of ``fmnist_main.yaml``'s runs), else ``name``."""

    name: str
    runs: list[Run]
    view: str = ""

    @property
    def file_prefix(self) -> str:
        """Prefix of report files, so that several views of one store write side by side."""
        return f"{self.view}-" if self.view and self.view != self.name else ""

    def frame(self) -> pd.DataFrame:
        """One row per run: dataset, student, method, plugin, variant, seed, state, run_dir and
        every flattened setting and hyper-parameter."""
        rows = [{"dataset": r.dataset, "student": r.student, "method": r.method, "plugin": r.config.get("plugin"),
                 "variant": r.variant, "seed": r.seed, "state": r.state, "run_dir": str(r.run_dir),
                 **_flat(r.config)} for r in self.runs]
        return pd.DataFrame(rows)

    def scores(self) -> pd.DataFrame:
        """One row per finished run and attack: avg, worst, worst10 (percent), nsd (fraction, NaN when
        undefined), the number of evaluated samples and classes, and the AutoAttack version."""
        rows = []
        for run in self.runs:
            for attack, result in ((run.metrics or {}).get("attacks") or {}).items():
                rows.append({"run_dir": str(run.run_dir), "dataset": run.dataset, "student": run.student,
                             "method": run.method,
                             "variant": run.variant, "seed": run.seed, "attack": attack,
                             **{k: np.nan if result.get(k) is None else result[k] for k in SCORES},
                             "n": result["n"], "classes": len(result["per_class"]),
                             "aa_version": run.metrics.get("aa_version")})
        return pd.DataFrame(rows, columns=["run_dir", "dataset", "student", "method", "variant", "seed", "attack",
                                           *SCORES, "n", "classes", "aa_version"])

    def class_names(self) -> list[str]:
        """The class names recorded in the first finished run."""
        for run in self.runs:
            if run.metrics:
                return list(run.metrics["class_names"])
        raise HarnessError(f"{self.name}: no finished run yet (nothing to draw)")

    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.done]


def _scan(folder: Path, name: str) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for config_path in sorted(folder.glob("*/*/*/seed*-*/config.json")):
        config = _read_json(config_path)
        if not isinstance(config, dict) or "method" not in config:
            raise HarnessError(f"{config_path}: not a run config")
        found.append((config_path.parent, config))
    if not found:
        raise HarnessError(f"{folder}: no runs of experiment '{name}' in the store")
    return found


def open_store(source: str | Path, results: str | Path = "results") -> Store:
    """The runs of an experiment: ``source`` is its YAML file (expected cells) or its name."""
    results = Path(results)
    source_text = str(source)
    from_file = source_text.endswith((".yaml", ".yml")) or Path(source_text).is_file()
    if from_file:
        experiment = load_experiment(source_text)
        cells = [(results / spec.relative_dir(), spec.to_dict()) for spec in experiment.cells]
        name, view = experiment.name, Path(source_text).stem
        if not (Path(source_text).parent / f"{name}.yaml").is_file():
            view = name  # not a view of another experiment file's store
    else:
        if not SAFE_NAME.match(source_text):
            raise HarnessError(f"{source_text}: not an experiment file or name")
        folder = results / source_text
        if not folder.is_dir():
            raise HarnessError(f"{source_text}: no experiment file of that name and no folder {folder}")
        cells, name = _scan(folder, source_text), source_text
        view = name
    axes = run_axes([config for _, config in cells])
    runs = [Run(run_dir, config, cell_state(run_dir), values) for (run_dir, config), values in zip(cells, axes)]
    if not from_file:  # a scanned store: a stable, readable order
        runs.sort(key=_reading_order)
    return Store(name, runs, view)


def _reading_order(run: Run) -> tuple:
    """Dataset, student, method (baselines first, FERD, then the data-based references), the varying
    values (numbers numerically), seed."""
    values = tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))
                   for v in run.axes.values())
    return (run.dataset, run.student, _method_rank(run.method), values, run.seed)
