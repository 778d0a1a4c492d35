"""Running grids: the state of each cell in the store, and the local executor.

A cell's run folder holds ``status.json`` (pending/running/done/failed, attempt, host,
device, times, error). ``run_experiment`` runs every cell that the mode selects, one after
another on one device, and keeps going when a cell fails.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Literal

from harness.config import Experiment, RunSpec
from harness.errors import HarnessError
from harness.store import atomic_write_json

Mode = Literal["cached", "retry", "force"]


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def cell_state(run_dir: Path) -> str:
    """done, failed, interrupted (started but not finished) or pending."""
    state = read_status(run_dir).get("state")
    if state == "done" and (run_dir / "metrics.json").exists():
        return "done"
    if state == "failed":
        return "failed"
    if state == "running" or (run_dir / "checkpoints").exists():
        return "interrupted"
    return "pending"


def selected(state: str, mode: Mode) -> bool:
    """Whether a cell in ``state`` runs under ``mode``."""
    return mode == "force" or state in ("pending", "interrupted") or (mode == "retry" and state == "failed")


def _write_status(run_dir: Path, **fields) -> None:
    atomic_write_json(run_dir / "status.json", {**read_status(run_dir), **fields, "heartbeat": time.time()})


def run_cell(spec: RunSpec, run_dir: Path, device: str, progress: bool, fresh: bool = False) -> str:
    """Run one cell and record its outcome in status.json; returns the final state."""
    from harness.backbone.trainer import train_cell

    if fresh:
        for name in ("checkpoints/last.pt", "metrics.json", "history.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    attempt = read_status(run_dir).get("attempt", 0) + 1
    _write_status(run_dir, state="running", attempt=attempt, host=socket.gethostname(), device=device,
                  started=time.time(), error=None)
    try:
        train_cell(spec, run_dir, device, progress)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # a failed cell is recorded and the grid goes on
        message = " ".join(str(error).split()) or type(error).__name__
        (run_dir / "error.log").write_text(traceback.format_exc())
        _write_status(run_dir, state="failed", error=f"{type(error).__name__}: {message}", finished=time.time())
        print(f"failed: {run_dir}: {message}", file=sys.stderr)
        return "failed"
    _write_status(run_dir, state="done", finished=time.time())
    return "done"


def run_experiment(experiment: Experiment, results: Path, *, device: str, mode: Mode = "cached",
                   progress: bool = True) -> Counter:
    """Run the selected cells of ``experiment`` one after another; count the outcomes."""
    outcome: Counter = Counter()
    cells = [(spec, results / spec.relative_dir()) for spec in experiment.cells]
    todo = [(spec, path) for spec, path in cells if selected(cell_state(path), mode)]
    outcome["skipped"] = len(cells) - len(todo)
    for number, (spec, run_dir) in enumerate(todo, 1):
        print(f"[{number}/{len(todo)}] {spec.relative_dir()}", file=sys.stderr)
        outcome[run_cell(spec, run_dir, device, progress, fresh=mode == "force")] += 1
    return outcome


def check_results_folder(results: Path) -> None:
    """Fail early with one line when the results folder cannot be written."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe = results / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise HarnessError(f"{results}: results folder is not writable ({error.strerror})") from None
