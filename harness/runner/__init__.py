"""Running grids: which cells run, and the executors that run them.

``run_experiment`` selects the cells the mode asks for, writes each one's ``config.json`` and
hands the jobs to an executor — ``local`` (:mod:`harness.runner.local`: one subprocess per GPU
or CPU slot) or ``slurm`` (:mod:`harness.runner.slurm`: submitit job arrays). Every executor
runs a cell through :func:`harness.worker.run_worker`, which holds the run folder's lock, so
two runners on one grid never run the same cell twice.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from harness.config import Experiment, RunSpec
from harness.errors import HarnessError
from harness.store import (CHECKPOINT_FILE, STATUS, atomic_write_json, cell_state, read_status, result_intact,
                           run_damage, write_status)

Mode = Literal["cached", "retry", "force"]


def selected(state: str, mode: Mode) -> bool:
    """Whether a cell in ``state`` runs under ``mode`` (a cell running elsewhere never does)."""
    if state == "running":
        return False
    return mode == "force" or state in ("pending", "interrupted") or (mode == "retry" and state == "failed")


@dataclass(frozen=True)
class Job:
    """One cell to run: its spec, its run folder, and whether earlier results are discarded."""

    spec: RunSpec
    run_dir: Path
    fresh: bool = False


class Executor(Protocol):
    """Runs jobs; returns how many ended done, failed, interrupted, busy (elsewhere) or submitted."""

    def run(self, jobs: list[Job], progress: bool) -> Counter: ...


def plan(experiment: Experiment, results: Path, mode: Mode) -> tuple[list[Job], Counter]:
    """The jobs ``mode`` selects (their ``config.json`` written) and the states of the others."""
    jobs, others = [], Counter()
    for spec in experiment.cells:
        run_dir = results / spec.relative_dir()
        repair_damage(run_dir)
        state = cell_state(run_dir)
        if selected(state, mode):
            atomic_write_json(run_dir / "config.json", spec.to_dict())
            jobs.append(Job(spec, run_dir, fresh=mode == "force"))
        else:
            others[{"done": "skipped", "failed": "failed earlier"}.get(state, state)] += 1
    return jobs, others


def repair_damage(run_dir: Path) -> str | None:
    """Deal with a damaged run folder (:func:`harness.store.run_damage`) before its cell is planned,
    and say in one line (on stderr, also returned) what was found and what happens: an unreadable
    ``status.json`` beside a whole result is rewritten as done; a truncated checkpoint is removed and
    the cell restarts; any other damage resumes from the checkpoint (which rewrites the history and
    re-evaluates) or, without one, restarts the cell. A cell a live worker holds is left alone."""
    damage = run_damage(run_dir)
    if not damage or cell_state(run_dir) == "running":
        return None
    found = "; ".join(f"{name} {problem}" for name, problem in damage.items())
    checkpoint = run_dir / CHECKPOINT_FILE
    if result_intact(run_dir, damage):
        if STATUS not in damage:
            return None  # only a stale checkpoint beside a whole result: nothing to redo
        (run_dir / STATUS).unlink()
        write_status(run_dir, state="done", repaired=f"{STATUS} was unreadable; rewritten from metrics.json")
        action = "rewritten as done (metrics.json is whole)"
    elif CHECKPOINT_FILE in damage:
        checkpoint.unlink()
        action = "checkpoint removed; the cell restarts from epoch 0"
    elif checkpoint.exists():
        action = "the cell resumes from checkpoints/last.pt (history and metrics rewritten)"
    else:
        action = "no checkpoint: the cell restarts from epoch 0"
    if STATUS in damage and not result_intact(run_dir):
        (run_dir / STATUS).unlink()  # a fresh status.json comes with the worker
    line = f"damaged: {run_dir}: {found}: {action}"
    print(line, file=sys.stderr)
    return line


def run_experiment(experiment: Experiment, results: Path, executor: Executor, *, mode: Mode = "cached",
                   progress: bool = True) -> Counter:
    """Run (or submit) the cells ``mode`` selects; count the outcomes."""
    jobs, outcome = plan(experiment, results, mode)
    outcome.update(executor.run(jobs, progress))
    for job in jobs:
        status = read_status(job.run_dir)
        if status.get("repaired"):  # the worker found the checkpoint unusable and restarted the cell
            print(status["repaired"], file=sys.stderr)
        if status.get("state") == "failed":
            print(f"failed: {job.run_dir}: {status.get('error')}", file=sys.stderr)
    return outcome


def check_results_folder(results: Path) -> None:
    """Fail early with one line when the results folder cannot be written."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=results):  # a unique name: concurrent runners never race on it
            pass
    except OSError as error:
        raise HarnessError(f"{results}: results folder is not writable ({error.strerror})") from None
