"""The result store's primitives: atomic writes (temporary file + rename), run status and run locks."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.errors import HarnessError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide results from the rest of a team
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:  # a full disk, or a signal mid-write: leave no temporary file behind
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise HarnessError(f"{path}: cannot write ({error.strerror})") from None
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


# --------------------------------------------------------------------------- run status and locks
STATUS = "status.json"
LOCK = ".lock"
STALE_AFTER = 300.0  # seconds without a heartbeat after which another host's run counts as interrupted


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``status.json`` (empty when missing or unreadable)."""
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_status(run_dir: str | Path, **fields: Any) -> None:
    """Merge ``fields`` into ``status.json`` and stamp the heartbeat."""
    atomic_write_json(Path(run_dir) / STATUS, {**read_status(run_dir), **fields, "heartbeat": time.time()})


class RunLock:
    """An exclusive advisory lock on a run folder (``flock`` on ``.lock``), freed by the kernel when
    its holder dies, so a killed worker never leaves a cell locked."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._handle: int | None = None

    def acquire(self, wait: float = 0.0, poll: float = 0.1) -> bool:
        """Take the lock, waiting up to ``wait`` seconds; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(handle)
                    return False
                time.sleep(poll)
                continue
            self._handle = handle
            return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock right now (probes without keeping it)."""
        if not self.path.exists():
            return False
        if self.acquire():
            self.release()
            return False
        return True


def cell_state(run_dir: str | Path) -> str:
    """done, failed, running (locked by a live worker, or another host's fresh heartbeat),
    interrupted (started, not finished, nobody on it) or pending."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    state = status.get("state")
    if state == "done" and (run_dir / "metrics.json").exists():
        return "done"
    if state == "failed":
        return "failed"
    if state == "running":
        if RunLock(run_dir).held_elsewhere():
            return "running"
        elsewhere = status.get("host") not in (None, socket.gethostname())
        if elsewhere and time.time() - status.get("heartbeat", 0) < STALE_AFTER:
            return "running"
    if state in ("running", "interrupted") or (run_dir / "checkpoints").exists():
        return "interrupted"
    return "pending"
