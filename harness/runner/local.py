"""The local executor: a queue of free device slots, one ``python -m harness.worker`` subprocess each.

Slots are the GPUs asked for (``--gpus 0,1``), else every visible GPU, else ``--workers N`` CPU
slots (the cores shared out through ``OMP_NUM_THREADS``). A job's output goes to
``worker.log`` in its run folder. Workers die with the runner (``PR_SET_PDEATHSIG`` on Linux),
and Ctrl-C ends the children the runner started, by pid; finished runs are never touched and
interrupted ones resume from their checkpoint on the next run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from harness.runner import Job
from harness.store import read_status
from harness.worker import BUSY, WORKERS_PER_DEVICE

POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Slot:
    """Where one job runs: the worker's ``--device`` and the environment that pins it."""

    name: str
    device: str
    env: dict[str, str] = field(default_factory=dict)


def visible_gpus() -> list[str]:
    """Physical ids of the GPUs this process may use (honouring an outer CUDA_VISIBLE_DEVICES)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    outer = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [item.strip() for item in outer.split(",") if item.strip()] if outer else [str(i) for i in range(count)]
    return ids[:count]


def local_slots(gpus: list[int] | None = None, workers: int | None = None, cpu: bool = False) -> list[Slot]:
    """GPU slots (``gpus`` are indices among the visible GPUs; default all), else ``workers`` CPU slots."""
    physical = [] if cpu else visible_gpus()
    if gpus is not None and not cpu:
        missing = [g for g in gpus if g >= len(physical)]
        if missing:
            from harness.errors import HarnessError

            raise HarnessError(f"--gpus: GPU {missing[0]} is not visible ({len(physical)} visible)")
        physical = [physical[g] for g in gpus]
    if physical:
        per_gpu = workers or 1
        threads = _threads(len(physical) * per_gpu)
        return [Slot(f"gpu{gid}" + (f".{k}" if per_gpu > 1 else ""), "cuda",
                     {"CUDA_VISIBLE_DEVICES": gid, WORKERS_PER_DEVICE: str(per_gpu), **threads})
                for gid in physical for k in range(per_gpu)]
    count = workers or 1
    return [Slot(f"cpu{k}", "cpu", {"CUDA_VISIBLE_DEVICES": "", WORKERS_PER_DEVICE: "1", **_threads(count)})
            for k in range(count)]


def _threads(jobs: int) -> dict[str, str]:
    """The cores shared out between ``jobs`` concurrent workers (at least one thread each)."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Running:
    job: Job
    slot: Slot
    process: subprocess.Popen
    started: float
    log_offset: int  # where this worker's output starts in worker.log


def _last_line(path: Path, offset: int) -> str:
    """The last non-empty line this worker wrote to its log (why it stopped), or a hint."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        lines = []
    return lines[-1].strip() if lines else "killed (no message); the next run resumes it"


def _epochs_done(job: Job) -> int:
    try:
        return sum(1 for _ in (job.run_dir / "history.jsonl").open())
    except FileNotFoundError:
        return 0


class LocalExecutor:
    """Runs jobs as worker subprocesses, at most one per slot at a time."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots
        self.durations: list[float] = []  # wall seconds of each finished worker process

    def _start(self, job: Job, slot: Slot) -> _Running:
        command = [sys.executable, "-m", "harness.worker", str(job.run_dir), "--device", slot.device, "--quiet"]
        if job.fresh:
            command.append("--fresh")
        job.run_dir.mkdir(parents=True, exist_ok=True)
        with (job.run_dir / "worker.log").open("ab") as log:
            offset = log.tell()
            process = subprocess.Popen(command, env={**os.environ, **slot.env}, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        return _Running(job, slot, process, time.time(), offset)

    @staticmethod
    def _outcome(running: _Running, code: int) -> str:
        """done/failed by this worker, skipped (found done: another runner finished it), busy
        (another live worker holds it) or interrupted (killed before it could finish)."""
        if code == BUSY:
            return "busy"
        status = read_status(running.job.run_dir)
        mine = status.get("pid") == running.process.pid
        if status.get("state") == "done":
            return "done" if mine else "skipped"
        if status.get("state") == "failed" and mine:
            return "failed"
        return "interrupted"

    def run(self, jobs: list[Job], progress: bool) -> Counter:
        outcome: Counter = Counter()
        pending, free = deque(jobs), list(self.slots)
        running: list[_Running] = []
        bar = tqdm(total=len(jobs), unit="run", desc="grid", disable=not progress or not jobs, dynamic_ncols=True)
        shown = ""
        try:
            while pending or running:
                while pending and free:
                    running.append(self._start(pending.popleft(), free.pop(0)))
                time.sleep(POLL_SECONDS)
                for item in list(running):
                    code = item.process.poll()
                    if code is None:
                        continue
                    running.remove(item)
                    free.append(item.slot)
                    self.durations.append(time.time() - item.started)
                    result = self._outcome(item, code)
                    outcome[result] += 1
                    if result == "interrupted":
                        why = _last_line(item.job.run_dir / "worker.log", item.log_offset)
                        tqdm.write(f"interrupted: {item.job.run_dir}: {why}", file=sys.stderr)
                    bar.update(1)
                summary = self._summary(outcome, running, len(pending))
                if summary != shown:  # redraw on change only: a log file gets a line per change, not per poll
                    bar.set_postfix_str(summary, refresh=True)
                    shown = summary
        except KeyboardInterrupt:
            self._terminate(running)
            raise
        finally:
            bar.close()
        return outcome

    @staticmethod
    def _summary(outcome: Counter, running: list[_Running], pending: int) -> str:
        cells = ", ".join(f"{r.job.spec.method} {_epochs_done(r.job)}/{r.job.spec.settings.schedule.epochs}"
                          for r in running)
        return (f"done {outcome['done']} failed {outcome['failed']} running {len(running)} pending {pending}"
                + (f" [{cells}]" if cells else ""))

    @staticmethod
    def _terminate(running: list[_Running]) -> None:
        """SIGTERM every child still running (they record 'interrupted'), then SIGKILL stragglers."""
        for item in running:
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGTERM)
        deadline = time.time() + TERMINATE_GRACE_SECONDS
        for item in running:
            try:
                item.process.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                item.process.kill()
                item.process.wait()
