"""One job of a grid: ``python -m harness.worker RUN_DIR [--device D] [--fresh]``.

Every executor (local subprocesses, Slurm through submitit) runs a cell through
:func:`run_worker`, so a cell behaves the same wherever it runs:

1. take the run folder's exclusive lock (waiting a few seconds for a dying predecessor);
   a folder locked by a live worker is left alone (exit status ``BUSY``);
2. a cell already done is not run again (unless ``--fresh``, the ``force`` mode);
3. ``status.json`` says running (attempt, host, pid, device), and a heartbeat thread
   refreshes it while the cell trains — resuming from ``checkpoints/last.pt`` if present;
4. the outcome is written: done, failed (with the error, e.g. a NaN loss; ``error.log``
   holds the traceback) or interrupted (SIGTERM/SIGINT; the next run resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from harness.errors import HarnessError
from harness.store import RunLock, read_status, result_intact, write_status

if TYPE_CHECKING:
    from harness.config import RunSpec

BUSY = 75  # EX_TEMPFAIL: another live worker holds the cell
WORKERS_PER_DEVICE = "HARNESS_WORKERS_PER_DEVICE"  # set by the local executor: jobs sharing this job's GPU
FAILED = 1
HEARTBEAT_SECONDS = float(os.environ.get("HARNESS_HEARTBEAT_SECONDS", "30"))
LOCK_WAIT_SECONDS = 10.0
FRESH_FILES = ("checkpoints/last.pt", "metrics.json", "history.jsonl", "samples.npz", "synthetic.npz", "student.pt",
               "cost.json")


class _Heartbeat(threading.Thread):
    """Refreshes ``status.json``'s heartbeat (and the run lock, where it is an owner file) every
    ``interval`` seconds until stopped."""

    def __init__(self, run_dir: Path, interval: float, lock: RunLock) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.interval, self.lock = run_dir, interval, lock
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.lock.refresh()
                write_status(self.run_dir)
            except HarnessError:  # a full disk must not kill the training thread; the cell's own writes will fail
                pass

    def stop(self) -> None:
        """Stop and wait for the thread: a refresh already in flight ends before the outcome is
        written, so it can never overwrite done/failed with running."""
        self.stopped.set()
        if self.is_alive():
            self.join()


def _failure_reason(error: Exception, spec: RunSpec, device: str) -> str:
    """One line for status.json; an out-of-memory error says what to change."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        schedule = spec.settings.schedule
        sharing = os.environ.get(WORKERS_PER_DEVICE, "1")
        return (f"out of memory on {device} at batch size {schedule.batch_size} with {sharing} worker(s) on this "
                f"device: lower schedule.batch_size, or run fewer workers per GPU (--workers)")
    message = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {message}"


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached the worker."""


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_worker(run_dir: str | Path, device: str = "cpu", fresh: bool = False, progress: bool = True) -> str:
    """Run the cell of ``run_dir/config.json`` under its lock; returns done, failed, busy or skipped."""
    from harness.trainer import train_cell
    from harness.config import RunSpec

    run_dir = Path(run_dir)
    lock = RunLock(run_dir)
    if not lock.acquire(wait=LOCK_WAIT_SECONDS):
        return "busy"
    try:
        status = read_status(run_dir)
        if not fresh and result_intact(run_dir):
            return "skipped"
        if fresh:
            for name in FRESH_FILES:
                (run_dir / name).unlink(missing_ok=True)
        try:
            spec = RunSpec.from_dict(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
        except (OSError, ValueError, HarnessError) as error:
            write_status(run_dir, state="failed", error=f"{type(error).__name__}: {error}", finished=time.time())
            return "failed"
        resumed = (run_dir / "checkpoints" / "last.pt").exists()
        write_status(run_dir, state="running", attempt=status.get("attempt", 0) + 1, host=socket.gethostname(),
                     pid=os.getpid(), device=device, started=time.time(), finished=None, error=None,
                     resumed=resumed, repaired=None)
        heartbeat = _Heartbeat(run_dir, HEARTBEAT_SECONDS, lock)
        heartbeat.start()
        try:
            train_cell(spec, run_dir, device, progress)
        except Interrupted as reason:
            heartbeat.stop()
            write_status(run_dir, state="interrupted", error=f"interrupted by {reason}")
            raise
        except Exception as error:  # the cell failed; the grid goes on
            heartbeat.stop()
            (run_dir / "error.log").write_text(traceback.format_exc())
            write_status(run_dir, state="failed", error=_failure_reason(error, spec, device), finished=time.time())
            return "failed"
        finally:
            heartbeat.stop()
        write_status(run_dir, state="done", finished=time.time())
        return "done"
    finally:
        lock.release()


EXIT_CODES = {"done": 0, "skipped": 0, "failed": FAILED, "busy": BUSY}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.worker", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder holding config.json")
    parser.add_argument("--device", default="cpu", help="torch device for this job (default: cpu)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results of this cell first")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)
    try:
        outcome = run_worker(args.run_dir, args.device, args.fresh, progress=not args.quiet)
    except Interrupted as reason:
        print(f"interrupted by {reason}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"{args.run_dir}: {outcome}", file=sys.stderr)
    return EXIT_CODES[outcome]


if __name__ == "__main__":
    sys.exit(main())
