"""The grid runner: worker subprocesses, run locks, kills at random moments, NaN runs, retry mode,
the status table, and the Slurm executor through submitit's local executor."""

import json
import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest

from harness.config import ExecutorSettings, SlurmSettings, load_experiment
from harness.runner import plan
from harness.runner.local import POLL_SECONDS, local_slots
from harness.runner.slurm import CellJob, SlurmExecutor, slurm_parameters
from harness.store import RunLock, atomic_write_json, cell_state, read_status, write_status
from tests.e2e import ROOT, harness_process, history_of, run_experiment, start_run, write_experiment

GRID = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: {epochs}, warmup_epochs: 0, generator_steps: 1, student_steps: 2, batch_size: 8,
              history_every: 100, probe_n: 10}}
  threat: {{train_steps: 1}}
  eval: {{attacks: [clean], n_eval: 20}}
grid:
  method: [{method}]
  seed: {seeds}
"""


def grid(where, teacher, *, epochs=2, seeds=(0, 1), method="noise", extra=""):
    write_experiment(where, GRID.format(teacher=teacher, epochs=epochs, seeds=list(seeds), method=method) + extra)
    return load_experiment(where / "exp.yaml")


def folders(where):
    return sorted((where / "results").glob("*/synthetic/*/resnet8/seed*-*"))


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_two_runners_run_each_cell_exactly_once(tmp_path, teacher_checkpoint):
    grid(tmp_path, teacher_checkpoint, seeds=(0, 1, 2, 3))
    runners = [start_run(tmp_path), start_run(tmp_path)]
    outputs = [finish(p) for p in runners]
    assert all(code == 0 for code, _, _ in outputs), outputs
    cells = folders(tmp_path)
    assert len(cells) == 4
    for folder in cells:
        status = read_status(folder)
        assert status["state"] == "done" and status["attempt"] == 1, folder
        log = (folder / "worker.log").read_text()
        assert log.count(": done") == 1, log
        assert len(history_of(folder)) == 2


def test_runner_and_worker_killed_at_random_moments_lose_nothing(tmp_path, teacher_checkpoint):
    grid(tmp_path, teacher_checkpoint, epochs=5, seeds=(0, 1, 2))
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    grid(reference_dir, teacher_checkpoint, epochs=5, seeds=(0, 1, 2))
    reference = start_run(reference_dir)
    rng = random.Random(7)
    resumable = set()  # cells running with a checkpoint when something was killed
    for round_ in range(4):
        runner = start_run(tmp_path)
        deadline = time.time() + 120
        while runner.poll() is None and time.time() < deadline:  # until a running cell has a checkpoint
            if any((f / "checkpoints/last.pt").exists() and read_status(f).get("state") == "running"
                   for f in folders(tmp_path)):
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        if runner.poll() is not None:
            break
        running = [f for f in folders(tmp_path) if read_status(f).get("state") == "running"]
        resumable |= {f for f in running if (f / "checkpoints/last.pt").exists()}
        if running and round_ % 2 == 0:  # kill -9 the worker; the runner goes on with the other cells
            try:
                os.kill(read_status(running[0])["pid"], signal.SIGKILL)
            except ProcessLookupError:  # it finished in the meantime
                pass
            code, _, _ = finish(runner)
            assert code == 1 or read_status(running[0])["state"] == "done"  # else the cell is left interrupted
        else:  # kill -9 the runner; its worker dies with it (PR_SET_PDEATHSIG)
            runner.send_signal(signal.SIGKILL)
            runner.wait()
    run_experiment(tmp_path)
    finish(reference)
    assert resumable, "no run was interrupted after its first checkpoint; lengthen the delays"
    for folder in folders(tmp_path):
        status = read_status(folder)
        assert status["state"] == "done", folder
        assert not RunLock(folder).held_elsewhere()
        twin = next((reference_dir / "results").glob(f"*/synthetic/noise/resnet8/{folder.name}"))
        assert history_of(folder) == history_of(twin)  # every epoch once, same numbers as a straight run
        for attack, numbers in json.loads((folder / "metrics.json").read_text())["attacks"].items():
            expected = json.loads((twin / "metrics.json").read_text())["attacks"][attack]
            assert {k: v for k, v in numbers.items() if k != "seconds"} == \
                {k: v for k, v in expected.items() if k != "seconds"}
        if folder in resumable:
            assert status["resumed"] is True and status["attempt"] >= 2, folder


def test_grid_bar_in_a_log_file_redraws_on_change_not_on_every_poll(tmp_path, teacher_checkpoint):
    grid(tmp_path, teacher_checkpoint, epochs=3, seeds=(0, 1))
    started = time.time()
    code, _, err = finish(harness_process("run", "exp.yaml", "--device", "cpu", cwd=tmp_path))
    polls = (time.time() - started) / POLL_SECONDS
    redraws = [line for line in err.splitlines() if line.startswith("grid:")]  # text mode: \r reads as \n
    assert code == 0 and "done 2 failed 0" in redraws[-1]
    # changes: each cell starts, passes 3 epochs, ends (+ the bar's own open/close): about a dozen
    assert len(redraws) <= 20 < polls, (len(redraws), polls)


def test_nan_run_fails_the_rest_completes_and_retry_reruns_only_it(tmp_path, teacher_checkpoint):
    grid(tmp_path, teacher_checkpoint, method="noise, noise-nan", epochs=3, seeds=(0,),
         extra="methods: {noise-nan: {nan_epoch: 2}}\n")
    code, out, err = finish(start_run(tmp_path))
    assert code == 1 and "1 done, 1 failed" in out
    nan_dir, = [f for f in folders(tmp_path) if "/noise-nan/" in str(f)]
    good_dir, = [f for f in folders(tmp_path) if "/noise/" in str(f)]
    status = read_status(nan_dir)
    assert status["state"] == "failed" and status["error"] == "RunFailed: toy_loss became nan at epoch 2"
    assert f"failed: {nan_dir.relative_to(tmp_path)}: RunFailed: toy_loss became nan at epoch 2" in err
    assert (nan_dir / "error.log").exists() and read_status(good_dir)["state"] == "done"

    table = harness_process("status", "exp.yaml", cwd=tmp_path)
    out, _ = table.communicate(timeout=120)
    assert "1 done" in out and "1 failed" in out
    assert "toy_loss became nan at epoch 2" in out

    code, out, _ = finish(start_run(tmp_path))  # cached: the failed run is left alone
    assert "1 failed earlier (--mode retry reruns them)" in out and read_status(nan_dir)["attempt"] == 1
    code, out, _ = finish(harness_process("run", "exp.yaml", "--quiet", "--device", "cpu", "--mode", "retry",
                                          cwd=tmp_path))
    assert read_status(nan_dir)["attempt"] == 2 and read_status(good_dir)["attempt"] == 1


def test_plan_writes_configs_that_workers_resolve_to_the_same_key(tmp_path, teacher_checkpoint):
    experiment = grid(tmp_path, teacher_checkpoint)
    jobs, others = plan(experiment, tmp_path / "results", "cached")
    assert len(jobs) == 2 and not others
    from harness.config import RunSpec

    for job in jobs:
        config = json.loads((job.run_dir / "config.json").read_text())
        assert RunSpec.from_dict(config).key == job.spec.key
        assert config["teacher_path"] == str(Path(teacher_checkpoint).resolve())
    config["params"] = {"unknown": 1}
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="not a run config"):
        RunSpec.from_dict(config)


def test_only_runs_the_chosen_cells_and_reports_when_the_whole_grid_is_done(tmp_path, teacher_checkpoint):
    grid(tmp_path, teacher_checkpoint, epochs=1, seeds=(0, 1), extra="report: [table]\n")
    process = start_run(tmp_path, args=("--only", "seed=1", "--dry-run"))
    code, out, _ = finish(process)
    assert code == 0 and out.split()[:2] == ["pending", "run"] and "/seed1-" in out and len(out.splitlines()) == 1

    code, out, err = finish(start_run(tmp_path, args=("--only", "seed=1")))
    assert code == 0, err
    assert [f.name.split("-")[0] for f in folders(tmp_path)] == ["seed1"]
    assert "report: not written, 1 of 2 cells are not finished" in err  # the grid's, not the chosen cells'
    assert not (tmp_path / "reports").exists()

    before = sorted(tmp_path.rglob("*"))
    code, out, err = finish(start_run(tmp_path, args=("--only", "seed=3")))
    assert (code, out) == (2, "")
    assert err == "error: exp.yaml: --only seed=3: no cell has this value (the grid's: 0, 1)\n"
    assert sorted(tmp_path.rglob("*")) == before  # nothing written

    code, out, err = finish(start_run(tmp_path, args=("--only", "seed=0", "--only", "method=noise")))
    assert code == 0, err
    assert all(read_status(folder)["state"] == "done" for folder in folders(tmp_path)) and len(folders(tmp_path)) == 2
    assert "wrote reports/exp/table.md" in out
    assert "| noise" in (tmp_path / "reports" / "exp" / "table.md").read_text()


def test_run_lock_is_exclusive_and_freed_on_release(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire()
    assert not second.acquire(wait=0.2) and second.held_elsewhere()
    first.release()
    assert second.acquire() and first.held_elsewhere()
    second.release()
    assert not first.held_elsewhere()
    write_status(tmp_path, state="running", host="elsewhere")
    assert cell_state(tmp_path) == "running"  # another host's fresh heartbeat (its lock is not visible here)
    atomic_write_json(tmp_path / "status.json", {**read_status(tmp_path), "heartbeat": time.time() - 3600})
    assert cell_state(tmp_path) == "interrupted"  # stale: nobody is on it
    write_status(tmp_path, host=socket.gethostname())
    assert cell_state(tmp_path) == "interrupted"  # this host: the free lock is the truth


def test_local_slots_share_the_cpu_cores():
    slots = local_slots(workers=2, cpu=True)
    assert [s.name for s in slots] == ["cpu0", "cpu1"] and all(s.device == "cpu" for s in slots)
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert all(s.env["OMP_NUM_THREADS"] == str(threads) and s.env["CUDA_VISIBLE_DEVICES"] == "" for s in slots)


def test_bad_executor_block_is_one_line(tmp_path, teacher_checkpoint):
    write_experiment(tmp_path, GRID.format(teacher=teacher_checkpoint, epochs=2, seeds=[0], method="noise")
                     + "executor: {slurm: {folder: ../../etc}}\n")
    process = harness_process("run", "exp.yaml", cwd=tmp_path)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2 and len(err.strip().splitlines()) == 1
    assert "executor.slurm.folder" in err and not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- Slurm through submitit
def test_slurm_without_a_cluster_is_one_line(tmp_path, teacher_checkpoint):
    grid(tmp_path, teacher_checkpoint, extra="executor: {kind: slurm}\n")
    process = harness_process("run", "exp.yaml", cwd=tmp_path)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2 and len(err.strip().splitlines()) == 1 and "srun" in err


def test_slurm_parameters_ask_for_one_gpu_per_task():
    settings = SlurmSettings(partition="gpu", account="lab", time=90, array_parallelism=8, mem_gb=32)
    assert slurm_parameters(settings) == {
        "timeout_min": 90, "gpus_per_node": 1, "tasks_per_node": 1, "nodes": 1, "cpus_per_task": 8,
        "slurm_array_parallelism": 8, "slurm_partition": "gpu", "slurm_account": "lab", "mem_gb": 32}
    assert ExecutorSettings().kind == "local"


def test_slurm_array_submission_writes_the_sbatch_script(tmp_path, teacher_checkpoint, monkeypatch):
    """The real Slurm executor, with ``sbatch`` replaced by a recorder: array size, GPUs, time, partition."""
    import submitit.slurm.slurm as slurm_module

    submitted = []

    def fake_submit(self, command):
        submitted.append(self._make_submission_file_text(command, "test"))
        return slurm_module.SlurmJob(folder=self.folder, job_id="4242_0", tasks=[0])

    monkeypatch.setattr(slurm_module.SlurmExecutor, "_submit_command", fake_submit)
    monkeypatch.setattr(slurm_module.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun" exists
    experiment = grid(tmp_path, teacher_checkpoint, seeds=(0, 1, 2))
    results = tmp_path / "results"
    jobs, _ = plan(experiment, results, "cached")
    executor = SlurmExecutor(SlurmSettings(partition="gpu", time=90), results)
    executor.submit(jobs)
    (script,) = submitted
    assert "#SBATCH --array=0-2%3" in script  # three cells; parallelism capped at the array size
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --time=90" in script
    assert "#SBATCH --partition=gpu" in script
    records = json.loads((results / "slurm" / "jobs.json").read_text())
    assert sorted(r["run_dir"] for r in records) == sorted(str(j.run_dir) for j in jobs)


@pytest.fixture
def job_environment(monkeypatch):
    """submitit's local jobs import the harness and the toy plugins like our workers do."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def test_slurm_local_cluster_runs_the_grid_and_waits(tmp_path, teacher_checkpoint, job_environment):
    grid(tmp_path, teacher_checkpoint, seeds=(0,), extra="executor: {kind: slurm, slurm: {cluster: local, time: 5}}\n")
    code, out, err = finish(harness_process("run", "exp.yaml", "--wait", cwd=tmp_path))
    assert code == 0 and "1 done" in out, err
    (folder,) = folders(tmp_path)
    assert read_status(folder)["state"] == "done"


def test_slurm_timeout_checkpoints_and_requeues_the_cell(tmp_path, teacher_checkpoint, job_environment):
    experiment = grid(tmp_path, teacher_checkpoint, epochs=40, seeds=(0,))
    results = tmp_path / "results"
    jobs, _ = plan(experiment, results, "cached")
    executor = SlurmExecutor(SlurmSettings(cluster="local", time=5), results)
    ((job, handle),) = executor.submit(jobs)
    deadline = time.time() + 180
    while time.time() < deadline and not (
            (job.run_dir / "checkpoints/last.pt").exists() and read_status(job.run_dir).get("state") == "running"):
        time.sleep(0.02)
    # what Slurm sends the task before its time limit (or on pre-emption): submitit calls checkpoint()
    os.kill(read_status(job.run_dir)["pid"], signal.SIGUSR2)
    assert handle.result() == "done"
    status = read_status(job.run_dir)
    assert status["attempt"] == 2 and status["resumed"] is True
    assert [h["epoch"] for h in history_of(job.run_dir)] == list(range(1, 41))
    requeued = CellJob(fresh=True).checkpoint(str(job.run_dir))
    assert requeued.function.fresh is False and requeued.args == (str(job.run_dir),)


def _results_of(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    return history_of(folder), {a: {k: v for k, v in r.items() if k != "seconds"} for a, r in metrics["attacks"].items()}


def test_damaged_run_folders_are_reported_and_repaired_without_losing_a_result(tmp_path, teacher_checkpoint):
    grid(tmp_path, teacher_checkpoint, epochs=2, seeds=(0, 1, 2, 3))
    run_experiment(tmp_path, args=("--workers", "2"))
    cells = folders(tmp_path)
    by_seed = {json.loads((f / "config.json").read_text())["seed"]: f for f in cells}
    before = {f: _results_of(f) for f in cells}
    truncate = lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # noqa: E731
    truncate(by_seed[0] / "status.json")  # the result is whole: only its status is rewritten
    truncate(by_seed[1] / "metrics.json")  # resumes from the final checkpoint and re-evaluates
    truncate(by_seed[2] / "history.jsonl")
    truncate(by_seed[2] / "checkpoints/last.pt")  # nothing to resume from: restarts
    (by_seed[3] / "checkpoints/last.pt").write_bytes((by_seed[0] / "checkpoints/last.pt").read_bytes())
    truncate(by_seed[3] / "metrics.json")  # and its checkpoint is seed 0's: restarts too

    shown = harness_process("status", "exp.yaml", cwd=tmp_path)
    out, err = shown.communicate(timeout=120)
    assert shown.returncode == 0 and "Traceback" not in err, err
    damaged = [line for line in out.splitlines() if line.startswith("damaged: ")]
    assert len(damaged) == 4 and "status.json unreadable" in out, out
    assert "checkpoints/last.pt truncated" in out and "metrics.json unreadable" in out

    process = start_run(tmp_path, args=("--workers", "2"))  # as before: one thread per cell, the same numbers
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("damaged: ")]
    says = {seed: [line for line in lines if f"{folder.relative_to(tmp_path)}:" in line] for seed, folder in by_seed.items()}
    assert len(says[0]) == 1 and "rewritten as done" in says[0][0], lines
    assert "resumes from checkpoints/last.pt" in says[1][0] and len(says[1]) == 1
    assert "checkpoint removed; the cell restarts from epoch 0" in says[2][0] and len(says[2]) == 1
    assert "from another run" in says[3][-1] and "restarts from epoch 0" in says[3][-1], says[3]
    for folder in cells:
        assert read_status(folder)["state"] == "done" and cell_state(folder) == "done"
        assert _results_of(folder) == before[folder], folder  # every result as it was
    assert (by_seed[0] / "worker.log").read_text().count(": done") == 1  # seed 0 was not rerun


def _alive(pid):
    """Whether ``pid`` is a live process (a zombie awaiting its reaper is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_no_worker_outlives_a_runner_killed_with_sigkill(tmp_path, teacher_checkpoint):
    grid(tmp_path, teacher_checkpoint, epochs=400, seeds=(0, 1))
    runner = start_run(tmp_path, args=("--workers", "2"))
    deadline, pids = time.time() + 120, []
    while time.time() < deadline and len(pids) < 2:
        pids = [read_status(f).get("pid") for f in folders(tmp_path) if read_status(f).get("state") == "running"]
        time.sleep(0.1)
    assert len(pids) == 2 and all(map(_alive, pids)), "the workers did not start"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(map(_alive, pids)):
        time.sleep(0.1)
    assert not any(map(_alive, pids)), "a worker outlived its runner"
    assert all(cell_state(f) == "interrupted" for f in folders(tmp_path))  # none left holding its cell


def test_two_runs_with_an_untrained_teacher_are_identical(tmp_path):
    results = []
    for name in ("first", "second"):
        where = tmp_path / name
        where.mkdir()
        write_experiment(where, GRID.format(teacher="null", epochs=2, seeds=[0, 1], method="noise")
                         .replace("{arch: cnn5, checkpoint: null}", "{arch: cnn5}"))
        run_experiment(where, args=("--workers", "2"))
        results.append({f.name: _results_of(f) for f in folders(where)})
    assert len(results[0]) == 2 and results[0] == results[1]


def test_status_shows_measured_minutes_and_expects_the_rest_by_the_median_of_finished_cells(tmp_path, teacher_checkpoint):
    experiment = grid(tmp_path, teacher_checkpoint, epochs=4, seeds=(0, 1, 2, 3, 4))
    by_seed = {spec.settings.seed: tmp_path / "results" / spec.relative_dir() for spec in experiment.cells}
    for seed, (total, evaluation) in {0: (600, 120), 1: (1200, 240), 2: (900, 60)}.items():
        folder = by_seed[seed]
        folder.mkdir(parents=True)
        atomic_write_json(folder / "config.json", {"key": experiment.cells[seed].key})
        atomic_write_json(folder / "metrics.json", {"key": experiment.cells[seed].key, "attacks": {}})
        atomic_write_json(folder / "cost.json", {"total_seconds": total, "seconds": {"evaluation": evaluation}})
        (folder / "history.jsonl").write_text("{}\n" * 4)
        write_status(folder, state="done", attempt=1)
    by_seed[3].mkdir(parents=True)  # half trained, nobody on it
    (by_seed[3] / "history.jsonl").write_text("{}\n" * 2)
    write_status(by_seed[3], state="interrupted", attempt=1)

    shown = harness_process("status", "exp.yaml", cwd=tmp_path)
    out, err = shown.communicate(timeout=120)
    assert shown.returncode == 0 and "Traceback" not in err, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    row = {seed: rows[str(experiment.cells[seed].relative_dir())] for seed in range(5)}
    # columns: run method state attempt epochs device host heartbeat_s train_min eval_min left_min
    assert [row[s][8:] for s in (0, 1, 2)] == [["8", "2", "0"], ["16", "4", "0"], ["14", "1", "0"]]
    # medians: training 14 min (8, 16, 14), evaluation 2 min (2, 4, 1)
    assert row[3][2] == "interrupted" and row[3][4] == "2/4" and row[3][10] == "9"  # 14 · (1 − 2/4) + 2
    assert row[4][2] == "pending" and row[4][8:] == ["-", "-", "16"]
    assert "left: about 25 min of cell time" in out


def test_status_says_the_time_left_is_unknown_when_no_cell_of_the_grid_has_finished(tmp_path, teacher_checkpoint):
    grid(tmp_path, teacher_checkpoint, epochs=4, seeds=(0, 1))
    shown = harness_process("status", "exp.yaml", cwd=tmp_path)
    out, err = shown.communicate(timeout=120)
    assert shown.returncode == 0 and "Traceback" not in err, err
    assert "left: unknown (2 cell(s) of a method with none finished)" in out
