"""The state table of a grid, read from the store (``python -m harness status FILE.yaml``)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pandas as pd

from harness.config import Experiment
from harness.store import cell_state, read_status, run_damage


def _epochs(run_dir: Path) -> int:
    try:
        return sum(1 for _ in (run_dir / "history.jsonl").open())
    except FileNotFoundError:
        return 0


def _measured_minutes(run_dir: Path) -> tuple[float, float] | None:
    """(training, evaluation) minutes of a finished cell from its ``cost.json``; None where it
    has none or an unreadable one (``status`` reports the damage separately)."""
    try:
        cost = json.loads((run_dir / "cost.json").read_text())
        total, evaluation = cost["total_seconds"], cost["seconds"].get("evaluation", 0.0)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    return (total - evaluation) / 60, evaluation / 60


def _minutes_left(state: str, epochs_done: int, epochs: int,
                  typical: tuple[float, float] | None) -> float | None:
    """Expected minutes of cell time still to go, by the median of the grid's finished cells of
    the same method: all of it for a cell not yet started, the untrained part of the training and
    all the evaluation for a started one; 0 when done, None with nothing to go by."""
    if state == "done":
        return 0.0
    if typical is None:
        return None
    training, evaluation = typical
    return training * (1 - min(epochs_done, epochs) / epochs) + evaluation


def grid_status(experiment: Experiment, results: Path) -> pd.DataFrame:
    """One row per cell: run folder, method, state, attempt, epochs done, device, host, seconds
    since the last heartbeat (cells not done), the measured training and evaluation minutes of a
    finished cell, the expected minutes left of the others (``left_min``: by the median of the
    grid's finished cells of the same method, on whatever machines ran them), the error of a
    failed run and what is damaged in the folder."""
    now = time.time()
    cells = []
    for spec in experiment.cells:
        run_dir = results / spec.relative_dir()
        state = cell_state(run_dir)
        cells.append((spec, run_dir, state, _measured_minutes(run_dir) if state == "done" else None))
    finished: dict[str, list[tuple[float, float]]] = {}
    for spec, _, _, minutes in cells:
        if minutes is not None:
            finished.setdefault(spec.method, []).append(minutes)
    typical = {method: (statistics.median(t for t, _ in spent), statistics.median(e for _, e in spent))
               for method, spent in finished.items()}
    rows = []
    for spec, run_dir, state, minutes in cells:
        status = read_status(run_dir)
        beat = status.get("heartbeat")
        epochs_done, epochs = _epochs(run_dir), spec.settings.schedule.epochs
        left = _minutes_left(state, epochs_done, epochs, typical.get(spec.method))
        rows.append({
            "run": str(spec.relative_dir()), "method": spec.method, "state": state,
            "attempt": status.get("attempt", 0), "epochs": f"{epochs_done}/{epochs}",
            "device": status.get("device", "-"), "host": status.get("host", "-"),
            "heartbeat_s": round(now - beat) if beat and state != "done" else None,
            "train_min": round(minutes[0]) if minutes else None,
            "eval_min": round(minutes[1]) if minutes else None,
            "left_min": round(left) if left is not None else None,
            "error": status.get("error") or "",
            "damage": "; ".join(f"{name} {problem}" for name, problem in run_damage(run_dir).items()),
        })
    table = pd.DataFrame(rows)
    whole = ["heartbeat_s", "train_min", "eval_min", "left_min"]
    table[whole] = table[whole].astype("Int64")
    return table
