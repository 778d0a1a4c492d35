"""Worker and store faults a GPU cluster meets: the heartbeat race, file systems without flock,
concurrent runners writing jobs.json, Slurm tasks without a GPU, out-of-memory, GPU slot threads."""

import errno
import fcntl
import json
import multiprocessing
import os
import socket
import threading
import time

import pytest
import torch

from harness import store, worker
from harness import trainer as trainer_module
from harness.config import load_experiment
from harness.runner.local import local_slots
from harness.runner.slurm import CellJob, append_job_records
from harness.store import FileLock, RunLock, read_status
from tests.e2e import write_experiment

CELL = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 1, warmup_epochs: 0, generator_steps: 1, student_steps: 1, batch_size: 96}}
  eval: {{attacks: [clean], n_eval: 10}}
grid:
  method: [noise]
"""


@pytest.fixture
def run_dir(tmp_path, teacher_checkpoint):
    write_experiment(tmp_path, CELL.format(teacher=teacher_checkpoint))
    (spec,) = load_experiment(tmp_path / "exp.yaml").cells
    folder = tmp_path / "results" / spec.relative_dir()
    store.atomic_write_json(folder / "config.json", spec.to_dict())
    return folder


def test_a_heartbeat_in_flight_never_overwrites_the_outcome(run_dir, monkeypatch):
    """The heartbeat reads status.json, is slow to write it back; the cell ends meanwhile."""
    in_flight = threading.Event()
    real_write = worker.write_status

    def slow_heartbeat_write(folder, **fields):
        if isinstance(threading.current_thread(), worker._Heartbeat):
            before = read_status(folder)
            in_flight.set()
            time.sleep(0.5)  # the outcome is written in this window on the old code
            store.atomic_write_json(folder / store.STATUS, {**before, **fields, "heartbeat": time.time()})
        else:
            real_write(folder, **fields)

    def train_until_a_heartbeat_is_in_flight(spec, folder, device, progress):
        assert in_flight.wait(10)

    monkeypatch.setattr(worker, "write_status", slow_heartbeat_write)
    monkeypatch.setattr(worker, "HEARTBEAT_SECONDS", 0.01)
    monkeypatch.setattr(trainer_module, "train_cell", train_until_a_heartbeat_is_in_flight)
    assert worker.run_worker(run_dir, progress=False) == "done"
    time.sleep(0.7)
    assert read_status(run_dir)["state"] == "done"


def _no_flock(handle, operation):
    raise OSError(errno.ENOSYS, "Function not implemented")


def test_locks_fall_back_to_an_owner_file_where_flock_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _no_flock)
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire()
    owner = json.loads(first.owner.read_text())
    assert owner == {"host": socket.gethostname(), "pid": os.getpid()}
    assert not second.acquire(wait=0.2)
    first.release()
    assert not first.owner.exists() and second.acquire()
    second.release()
    # a holder that died on this host leaves a stale owner file: it is taken over
    dead = multiprocessing.get_context("fork").Process(target=lambda: None)
    dead.start()
    dead.join()
    first.owner.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    assert second.acquire()
    second.release()
    # another host's owner file is trusted until it goes without a refresh for STALE_AFTER seconds
    first.owner.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert not second.acquire()
    old = time.time() - store.STALE_AFTER - 1
    os.utime(first.owner, (old, old))
    assert second.acquire()


def test_other_lock_errors_are_one_line(tmp_path, monkeypatch):
    def broken(handle, operation):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(store.HarnessError, match="cannot lock"):
        FileLock(tmp_path / "x.lock").acquire()


def _append_many(path, writer):
    for index in range(15):
        append_job_records(path, [{"run_dir": f"{writer}/{index}", "job_id": f"{writer}_{index}"}])


def test_concurrent_runners_lose_no_job_record(tmp_path):
    path = tmp_path / "jobs.json"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join()
    records = json.loads(path.read_text())
    assert len(records) == 60 and len({r["job_id"] for r in records}) == 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the task of a node without a GPU")
def test_a_slurm_task_without_a_gpu_fails_with_one_line(run_dir):
    assert CellJob()(str(run_dir)) == "failed"
    status = read_status(run_dir)
    assert status["state"] == "failed" and "no GPU visible to this Slurm task" in status["error"]
    assert not (run_dir / "metrics.json").exists()


def test_out_of_memory_names_batch_size_and_workers_per_gpu(run_dir, monkeypatch):
    def out_of_memory(spec, folder, device, progress):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_module, "train_cell", out_of_memory)
    monkeypatch.setenv(worker.WORKERS_PER_DEVICE, "3")
    assert worker.run_worker(run_dir, device="cuda", progress=False) == "failed"
    error = read_status(run_dir)["error"]
    assert "out of memory on cuda at batch size 96 with 3 worker(s)" in error and "\n" not in error


def test_gpu_slots_share_the_cores_and_say_how_many_share_a_gpu(monkeypatch):
    from harness.runner import local

    monkeypatch.setattr(local, "visible_gpus", lambda: ["0", "1"])
    slots = local_slots(workers=2)
    assert [s.name for s in slots] == ["gpu0.0", "gpu0.1", "gpu1.0", "gpu1.1"]
    threads = str(max(1, (os.cpu_count() or 1) // 4))
    assert all(s.env["OMP_NUM_THREADS"] == threads and s.env[worker.WORKERS_PER_DEVICE] == "2" for s in slots)


def test_checkpoints_stream_to_a_temporary_file_then_rename(tmp_path, monkeypatch):
    """No serialised copy of the whole state in memory, and never a partial checkpoint."""
    path = tmp_path / "last.pt"
    trainer_module.save_checkpoint(path, {"w": torch.ones(3)})
    streams = []
    real_save = torch.save

    def recording_save(obj, stream):
        streams.append(stream)
        real_save(obj, stream)

    monkeypatch.setattr(torch, "save", recording_save)
    trainer_module.save_checkpoint(path, {"w": torch.zeros(3)})
    assert streams and hasattr(streams[0], "fileno") and streams[0].name != str(path)  # a real temporary file

    def failing_save(obj, stream):
        stream.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError):
        trainer_module.save_checkpoint(path, {"w": torch.full((3,), 2.0)})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
