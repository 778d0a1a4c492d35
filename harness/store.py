"""The result store's primitives: atomic writes (temporary file + rename), run status and run locks."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from harness.errors import HarnessError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(stream)`` into a temporary file beside ``path``, then rename it over ``path``:
    readers see the old or the new file, never a part."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide results from the rest of a team
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:  # a full disk, or a signal mid-write: leave no temporary file behind
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise HarnessError(f"{path}: cannot write ({error.strerror})") from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda stream: stream.write(data))


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


# errno values of a file system that has no flock (Lustre mounted without it, some NFS setups)
FLOCK_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL})
UNWRITTEN_OWNER_SECONDS = 30.0  # an owner file still empty this long after creation was left by a crash


class FileLock:
    """An exclusive advisory lock on ``path``.

    ``flock`` where the file system has it: the kernel frees it when its holder dies, so a killed
    process never leaves it held. Where ``flock`` fails with ENOSYS / EOPNOTSUPP / ENOLCK (Lustre
    mounted without flock), an owner file ``<path>.owner`` created with O_EXCL and naming host and
    pid stands in: it is taken over when its holder is a dead process on this host, or when it was
    not refreshed (:meth:`refresh`, the worker's heartbeat) for ``STALE_AFTER`` seconds.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.owner = self.path.with_name(self.path.name + ".owner")
        self._handle: int | None = None
        self._owns_file = False
        self._fallback = False

    def acquire(self, wait: float = 0.0, poll: float = 0.1) -> bool:
        """Take the lock, waiting up to ``wait`` seconds; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait
        while not self._try():
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)
        return True

    def _try(self) -> bool:
        if self._fallback:
            return self._try_owner_file()
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            return False
        except OSError as error:
            os.close(handle)
            if error.errno not in FLOCK_UNSUPPORTED:
                raise HarnessError(f"{self.path}: cannot lock ({error.strerror})") from None
            self._fallback = True
            return self._try_owner_file()
        self._handle = handle
        return True

    def _try_owner_file(self) -> bool:
        for _ in range(2):  # a second try after removing a stale owner
            try:
                handle = os.open(self.owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self._owner_is_stale():
                    return False
                self.owner.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as stream:
                json.dump({"host": socket.gethostname(), "pid": os.getpid()}, stream)
            self._owns_file = True
            return True
        return False

    def _owner_is_stale(self) -> bool:
        try:
            age = time.time() - self.owner.stat().st_mtime
            owner = json.loads(self.owner.read_text() or "null")
        except FileNotFoundError:
            return True
        except (OSError, json.JSONDecodeError):
            owner = None
        if not isinstance(owner, dict):  # created, not yet written, or left half-written by a crash
            return age > UNWRITTEN_OWNER_SECONDS
        if owner.get("host") == socket.gethostname():
            return not _process_alive(owner.get("pid"))
        return age > STALE_AFTER

    def refresh(self) -> None:
        """Mark the lock as still held (fallback mode only; flock needs nothing)."""
        if self._owns_file:
            try:
                os.utime(self.owner)
            except OSError:
                pass

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None
        if self._owns_file:
            self.owner.unlink(missing_ok=True)
            self._owns_file = False

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock right now (probes without keeping it)."""
        if not self.path.exists() and not self.owner.exists():
            return False
        if self.acquire():
            self.release()
            return False
        return True


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class RunLock(FileLock):
    """The lock of a run folder (``.lock`` inside it): a worker holds it while it runs the cell."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(Path(run_dir) / LOCK)


CHECKPOINT_FILE = "checkpoints/last.pt"


def _json_problem(path: Path, key: str | None) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"unreadable ({type(error).__name__})"
    if not isinstance(data, dict):
        return "unreadable (not a JSON object)"
    if path.name == "metrics.json":
        if not isinstance(data.get("attacks"), dict):
            return "incomplete (no attacks)"
        if key is not None and data.get("key") not in (None, key):
            return f"from another run (key {data.get('key')}, the cell's is {key})"
    return None


def run_damage(run_dir: str | Path) -> dict[str, str]:
    """What is unreadable in a run folder, file by file: ``status.json`` or ``metrics.json`` that do
    not parse (or metrics of another run key), a ``history.jsonl`` line that does not parse, a
    checkpoint that is not a complete archive (truncated). Files that are absent are not damage."""
    run_dir = Path(run_dir)
    damage: dict[str, str] = {}
    try:
        key = json.loads((run_dir / "config.json").read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        key = None
    for name in (STATUS, "metrics.json"):
        if (run_dir / name).exists() and (problem := _json_problem(run_dir / name, key)):
            damage[name] = problem
    try:
        for number, line in enumerate((run_dir / "history.jsonl").read_text().splitlines(), 1):
            if line.strip():
                json.loads(line)
    except FileNotFoundError:
        pass
    except (UnicodeDecodeError, json.JSONDecodeError):
        damage["history.jsonl"] = f"line {number} unreadable"
    checkpoint = run_dir / CHECKPOINT_FILE
    if checkpoint.exists() and not zipfile.is_zipfile(checkpoint):
        damage[CHECKPOINT_FILE] = "truncated (not a complete archive)"
    return damage


def result_intact(run_dir: str | Path, damage: dict[str, str] | None = None) -> bool:
    """A finished result: ``metrics.json`` of this run key and its history readable, with ``status.json``
    saying done — or unreadable, which the runner then rewrites (the result itself is whole)."""
    run_dir = Path(run_dir)
    damage = run_damage(run_dir) if damage is None else damage
    if not (run_dir / "metrics.json").exists() or damage.keys() & {"metrics.json", "history.jsonl"}:
        return False
    return STATUS in damage or read_status(run_dir).get("state") == "done"


def cell_state(run_dir: str | Path) -> str:
    """done, failed, running (locked by a live worker, or another host's fresh heartbeat),
    interrupted (started, not finished, nobody on it — or a damaged folder: :func:`run_damage`)
    or pending."""
    run_dir = Path(run_dir)
    damage = run_damage(run_dir)
    if result_intact(run_dir, damage):
        return "done"
    status = read_status(run_dir)
    state = status.get("state")
    if state == "failed":
        return "failed"
    if state == "running" or STATUS in damage:
        if RunLock(run_dir).held_elsewhere():
            return "running"
        elsewhere = status.get("host") not in (None, socket.gethostname())
        if elsewhere and time.time() - status.get("heartbeat", 0) < STALE_AFTER:
            return "running"
    if state in ("running", "interrupted", "done") or damage or (run_dir / "checkpoints").exists():
        return "interrupted"
    return "pending"
