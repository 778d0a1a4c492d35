"""The Slurm executor: one submitit job array per grid, one GPU per task.

Each task runs :func:`harness.worker.run_worker` on its run folder. On a timeout or a
pre-emption submitit calls :meth:`CellJob.checkpoint`, which requeues the same cell: the
trainer checkpoints every ``schedule.checkpoint_every`` epochs, so the requeued task resumes
from ``checkpoints/last.pt``. By default the runner submits, writes ``jobs.json`` (job ids per
run folder) next to submitit's logs and returns; ``--wait`` waits for the array to finish.

Settings come from the experiment's ``executor.slurm`` block, overridden by command-line flags.
``cluster: local`` (or ``debug``) runs the same array through submitit on this machine — the
test suite's way to exercise this path without a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness.config import SlurmSettings
from harness.errors import HarnessError
from harness.runner import Job
from harness.store import FileLock, atomic_write_json, read_status, write_status


def slurm_parameters(settings: SlurmSettings) -> dict[str, Any]:
    """``executor.update_parameters`` arguments (submitit's AutoExecutor names)."""
    parameters: dict[str, Any] = {
        "timeout_min": settings.time, "gpus_per_node": 1, "tasks_per_node": 1, "nodes": 1,
        "cpus_per_task": settings.cpus_per_task, "slurm_array_parallelism": settings.array_parallelism,
    }
    for name in ("partition", "account", "qos", "constraint"):
        value = getattr(settings, name)
        if value is not None:
            parameters[f"slurm_{name}"] = value
    if settings.mem_gb is not None:
        parameters["mem_gb"] = settings.mem_gb
    return parameters


def append_job_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Add ``records`` to the JSON list in ``path`` under a lock: concurrent runners lose none."""
    lock = FileLock(path.with_name(path.name + ".lock"))
    if not lock.acquire(wait=60.0):
        raise HarnessError(f"{path}: another runner has held its lock for 60 s")
    try:
        previous = json.loads(path.read_text()) if path.exists() else []
        atomic_write_json(path, previous + records)
    finally:
        lock.release()


class CellJob:
    """The callable a Slurm task runs; checkpointable, so a timeout requeues the cell.

    On a real cluster a task without a visible GPU fails with one line (it never falls back to
    the CPU); submitit's ``local``/``debug`` clusters run on this machine's device, GPU or not.
    """

    def __init__(self, fresh: bool = False, require_gpu: bool = True) -> None:
        self.fresh, self.require_gpu = fresh, require_gpu

    def __call__(self, run_dir: str) -> str:
        import torch

        from harness.worker import run_worker

        if not torch.cuda.is_available() and not self.require_gpu:
            return run_worker(run_dir, "cpu", fresh=self.fresh, progress=False)
        if not torch.cuda.is_available():  # never fall back to the CPU: a cell would take weeks there
            error = (f"no GPU visible to this Slurm task on {socket.gethostname()} (CUDA_VISIBLE_DEVICES="
                     f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); check the partition's --gres")
            write_status(run_dir, state="failed", error=error, finished=time.time())
            print(error, file=sys.stderr)
            return "failed"
        return run_worker(run_dir, "cuda", fresh=self.fresh, progress=False)

    def checkpoint(self, run_dir: str) -> Any:
        """Called by submitit on timeout/pre-emption: requeue the cell (it resumes, never restarts)."""
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(fresh=False, require_gpu=self.require_gpu), run_dir)


class SlurmExecutor:
    """Submits every job as one array; waits for it only when asked."""

    def __init__(self, settings: SlurmSettings, results: Path, wait: bool = False) -> None:
        self.settings, self.results, self.wait = settings, results, wait

    def executor(self) -> Any:
        import submitit

        folder = self.results / self.settings.folder / "%j"
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=self.settings.cluster,
                                             slurm_max_num_timeout=self.settings.max_requeues,
                                             local_max_num_timeout=self.settings.max_requeues)
        except RuntimeError as error:  # e.g. no srun here
            raise HarnessError(f"executor slurm (cluster {self.settings.cluster}): {error}") from None
        executor.update_parameters(**slurm_parameters(self.settings))
        return executor

    def submit(self, jobs: list[Job]) -> list[tuple[Job, Any]]:
        """Submit ``jobs`` as arrays (one per fresh/resume kind); record ``jobs.json``; return
        each job with its submitit handle."""
        if not jobs:
            return []
        executor = self.executor()
        submitted = []
        for fresh in (False, True):
            group = [job for job in jobs if job.fresh == fresh]
            if group:
                cell_job = CellJob(fresh, require_gpu=self.settings.cluster == "slurm")
                handles = executor.map_array(cell_job, [str(job.run_dir) for job in group])
                submitted += list(zip(group, handles))
        path = self.results / self.settings.folder / "jobs.json"
        records = [{"run_dir": str(job.run_dir), "job_id": handle.job_id} for job, handle in submitted]
        append_job_records(path, records)
        print(f"submitted {len(submitted)} tasks ({self.settings.cluster}); job ids in {path}", file=sys.stderr)
        return submitted

    def run(self, jobs: list[Job], progress: bool) -> Counter:
        submitted = self.submit(jobs)
        if not self.wait:
            return Counter(submitted=len(submitted))
        outcome: Counter = Counter()
        for job, handle in submitted:
            try:
                result = handle.result()
            except Exception:  # the task itself crashed; its state tells what is left
                result = "failed" if read_status(job.run_dir).get("state") == "failed" else "interrupted"
            outcome["done" if result == "skipped" else result] += 1
        return outcome
