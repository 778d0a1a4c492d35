"""Shared helpers for end-to-end runs of ``python -m harness run`` on the ``synthetic`` dataset.

Each test keeps its own experiment YAML, budgets and assertions; this module only starts the
harness, finds run folders, kills a run at its first checkpoint and reads its history.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ("run", "exp.yaml", "--quiet", "--device", "cpu")


def harness_process(*args, cwd, env=None):
    """Start ``python -m harness ARGS`` in ``cwd`` with PYTHONPATH at the repository (plus ``env``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "harness", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_experiment(where, text):
    """Write ``text`` as ``where/exp.yaml``."""
    (where / "exp.yaml").write_text(text)


def start_run(where, env=None, args=()):
    """Start ``harness run exp.yaml --quiet --device cpu [ARGS]`` in ``where`` (not waited for)."""
    return harness_process(*RUN, *args, cwd=where, env=env)


def run_experiment(where, timeout=300, env=None, args=()):
    """Run ``exp.yaml`` in ``where`` to the end, assert it succeeded, return its stdout. ``args``
    such as ``("--workers", "2")`` run a grid's cells two at a time (one thread each)."""
    process = start_run(where, env, args)
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


def run_folder(results, method):
    """The single seed-0 ResNet-8 run folder of ``method`` under ``results``."""
    (folder,) = list(results.glob(f"*/synthetic/{method}/resnet8/seed0-*"))
    return folder


def kill_at_first_checkpoint(process, results, method, timeout=240, poll=0.01):
    """SIGKILL ``process`` once ``checkpoints/last.pt`` of ``method`` appears; return that path.

    Fails if the run finishes first; returns None if ``timeout`` passes with no checkpoint."""
    deadline = time.time() + timeout
    checkpoint = None
    while time.time() < deadline and process.poll() is None:
        found = list(results.glob(f"*/synthetic/{method}/resnet8/seed0-*/checkpoints/last.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(poll)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return checkpoint


def history_of(folder):
    """The lines of ``folder/history.jsonl`` without their ``seconds`` (comparable across runs)."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (folder / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """A randomly initialised (seed 0) cnn5 teacher for ``synthetic``, saved once per module."""
    import torch

    from harness.models import create_model

    path = tmp_path_factory.mktemp("teacher") / "cnn5.pt"
    torch.manual_seed(0)
    torch.save(create_model("cnn5", in_channels=3, num_classes=10, image_size=16).state_dict(), path)
    return path
