"""A fault campaign: does any ``kill -9`` lose, corrupt or change a result?

Runs a small grid on ``synthetic`` (6 cells: noise, DeepInversion and CMI × 2 seeds, 4 epochs, an
untrained seeded teacher) with ``--workers 2``, and sends SIGKILL at random moments to the runner or
to one of its running workers, ``--kills`` times, restarting the runner whenever it is not running.
Then it checks, cell by cell:

* **done once**: the cell is done, and its ``worker.log`` says so exactly once;
* **no epoch trained twice beyond one checkpoint interval**: every attempt started at the epoch the
  cell had reached when the previous attempt was killed, or the one before (the checkpoint is
  written just after the history line);
* **nothing lost or partial**: no temporary file left, and every file of the folder reads
  (``harness.store.run_damage``);
* **the same result**: ``metrics.json`` and ``history.jsonl`` equal (but for timings) those of an
  uninterrupted run of the same grid with the same thread count.

Prints ``N kills (R of the runner, W of a worker; S cells stopped), C/6 cells done once, L results
lost, D differ from the uninterrupted run, E restarts redid more than one checkpoint interval``. Usage:

    python benchmarks/faults.py [--kills 20] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.store import read_status, run_damage

ROOT = Path(__file__).resolve().parents[1]
GRID = """
name: faults
base:
  dataset: synthetic
  student: resnet8
  teacher: {arch: cnn5}
  schedule: {epochs: 4, warmup_epochs: 0, generator_steps: 2, student_steps: 6, batch_size: 32,
             history_every: 2, probe_n: 20}
  threat: {train_steps: 2}
  eval: {attacks: [clean, pgd20], n_eval: 100}
methods:
  deepinv: {inversion_steps: 5}
grid:
  method: [noise, deepinv, cmi]
  seed: [0, 1]
"""


def start_runner(where: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "harness", "run", "faults.yaml", "--workers", "2", "--quiet",
                             "--device", "cpu"], cwd=where, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def cells(where: Path) -> list[Path]:
    return sorted((where / "results" / "faults").glob("synthetic/*/resnet8/seed*-*"))


def epochs_done(folder: Path) -> int:
    try:
        return sum(1 for line in (folder / "history.jsonl").read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def comparable(folder: Path) -> tuple:
    metrics = json.loads((folder / "metrics.json").read_text())
    attacks = {a: {k: v for k, v in r.items() if k != "seconds"} for a, r in metrics["attacks"].items()}
    history = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (folder / "history.jsonl").read_text().splitlines()]
    return attacks, history


def _alive(pid: object) -> bool:
    try:
        return isinstance(pid, int) and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _training(where: Path) -> list[Path]:
    """Cells a live worker is on now (a killed worker's status says running until the cell is rerun)."""
    return [c for c in cells(where) if read_status(c).get("state") == "running" and _alive(read_status(c).get("pid"))]


def _grid_done(where: Path) -> bool:
    return len(cells(where)) == 6 and all(read_status(c).get("state") == "done" for c in cells(where))


def campaign(where: Path, kills: int, rng: random.Random) -> tuple[int, int, list[tuple[Path, int, int]]]:
    """Kill at random moments; return the runner kills, the worker kills and, for every cell a kill
    stopped, (cell, size of its worker.log then, epochs it had finished)."""
    runner_kills = worker_kills = 0
    events: list[tuple[Path, int, int]] = []
    runner = start_runner(where)
    while runner_kills + worker_kills < kills and not _grid_done(where):
        while runner.poll() is None and not _training(where):  # a moment while cells train, not start-up
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))
        if runner.poll() is not None:  # it ended with cells left interrupted: restart it
            runner = start_runner(where)
            continue
        training = _training(where)
        if training and rng.random() < 0.5:
            victims = [rng.choice(training)]
            try:
                os.kill(read_status(victims[0])["pid"], signal.SIGKILL)
            except ProcessLookupError:  # it finished in the meantime
                continue
            worker_kills += 1
        else:
            victims = training
            runner.send_signal(signal.SIGKILL)
            runner.wait()
            runner_kills += 1
        for cell in victims:
            events.append((cell, (cell / "worker.log").stat().st_size, epochs_done(cell)))
        if runner.poll() is not None:
            time.sleep(0.5)  # its workers end with it (PR_SET_PDEATHSIG)
            runner = start_runner(where)
    runner.wait()
    while not _grid_done(where):  # finish the grid without further faults
        start_runner(where).wait()
    return runner_kills, worker_kills, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and targets")
    parser.add_argument("--keep", help="keep the two run stores in this folder")
    args = parser.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="faults-"))
    faulty, reference = base / "faulty", base / "reference"
    for where in (faulty, reference):
        where.mkdir(parents=True, exist_ok=True)
        (where / "faults.yaml").write_text(GRID)
    start = time.time()
    start_runner(reference).wait()
    print(f"uninterrupted grid: {time.time() - start:.0f} s", flush=True)
    runner_kills, worker_kills, events = campaign(faulty, args.kills, random.Random(args.seed))
    done_once = lost = differ = 0
    for cell in cells(faulty):
        log = (cell / "worker.log").read_text()
        done_once += read_status(cell).get("state") == "done" and log.count(": done\n") == 1
        lost += bool(list(cell.rglob(".*.tmp")) or run_damage(cell))
        twin = next((reference / "results" / "faults").glob(f"synthetic/*/resnet8/{cell.name}"))
        differ += comparable(cell) != comparable(twin)
    redone = 0  # restarts that began more than one checkpoint before the epochs the killed attempt had finished
    for cell, offset, reached in events:
        restart = re.search(r"starting at epoch (\d+) of", (cell / "worker.log").read_bytes()[offset:].decode())
        redone += bool(restart) and int(restart.group(1)) < reached - 1
    print(f"{runner_kills + worker_kills} kills ({runner_kills} of the runner, {worker_kills} of a worker; "
          f"{len(events)} cells stopped), {done_once}/{len(cells(faulty))} cells done once, {lost} results lost, "
          f"{differ} differ from the uninterrupted run, {redone} restarts redid more than one checkpoint "
          f"interval ({time.time() - start:.0f} s)")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
