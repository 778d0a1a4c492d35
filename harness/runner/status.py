"""The state table of a grid, read from the store (``python -m harness status FILE.yaml``)."""

from __future__ import annotations

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


def grid_status(experiment: Experiment, results: Path) -> pd.DataFrame:
    """One row per cell: run folder, method, state, attempt, epochs done, device, host,
    seconds since the last heartbeat, the error of a failed run and what is damaged in the folder."""
    rows = []
    now = time.time()
    for spec in experiment.cells:
        run_dir = results / spec.relative_dir()
        status = read_status(run_dir)
        beat = status.get("heartbeat")
        rows.append({
            "run": str(spec.relative_dir()), "method": spec.method, "state": cell_state(run_dir),
            "attempt": status.get("attempt", 0),
            "epochs": f"{_epochs(run_dir)}/{spec.settings.schedule.epochs}",
            "device": status.get("device", "-"), "host": status.get("host", "-"),
            "heartbeat_s": round(now - beat) if beat else None, "error": status.get("error") or "",
            "damage": "; ".join(f"{name} {problem}" for name, problem in run_damage(run_dir).items()),
        })
    return pd.DataFrame(rows)
