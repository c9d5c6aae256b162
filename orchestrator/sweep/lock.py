"""One driver per sweep: `run` and `resume` hold the output directory for their whole life.

Two drivers on one sweep corrupt it (both create the MLflow schema at once; the second takes
the first's running trials for a killed driver's and drops them), so:

- OUT/.lock is an OS file lock (fcntl.flock), taken before anything else in OUT is created or
  read for writing. The kernel releases it when the driver exits, however it exits (SIGKILL
  too), so a killed driver never leaves a stale lock. The file holds the holder's host, pid
  and start time, for the refusal message; it is removed when the driver ends (a driver that
  then gets the old file's lock sees that the path names another file and tries again).
- With a storage_uri, <storage_uri>/lease.json holds the same plus a heartbeat time that a
  thread refreshes every LEASE_REFRESH_S seconds. Another driver takes it over only when it is
  stale: its process on the same host has ended, or its heartbeat is older than
  LEASE_TIMEOUT_S (clocks of the hosts are assumed to agree to well within that). Object stores
  offer no atomic create through pyarrow, so a new lease is written, left LEASE_SETTLE_S
  seconds, and read back: of two drivers starting on the same prefix at the same instant at
  most one finds its own lease there (best effort; the OUT lock is exact).

`report` and `export` only read and take neither.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from defer_core.errors import DeferInputError
from defer_core.files import make_dirs

from ..sinks.layout import LOCK_FILE, SweepLayout
from ..storage import Location, delete_file, one_line, read_bytes, write_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")

LEASE_FILE = "lease.json"  # at the storage_uri
LEASE_REFRESH_S = 15.0  # how often a running driver renews its heartbeat
LEASE_TIMEOUT_S = 120.0  # a heartbeat older than this is a dead driver's
LEASE_SETTLE_S = 1.0  # how long a new lease is left before it is read back
_HOLDER_WAIT_S = 1.0  # a lock just taken may not say who holds it yet
_ATTEMPTS = 5  # tries when the lock file is removed between opening and locking it


@dataclass(frozen=True)
class Holder:
    """Who holds a sweep: the driver's host, pid, start time, and (lease only) heartbeat."""

    host: str
    pid: int
    since: str  # ISO-8601, UTC
    heartbeat: float = 0.0  # seconds since the epoch
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def me(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), datetime.now(timezone.utc).isoformat(timespec="seconds"), time.time())

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.since}"

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def from_json(cls, payload: bytes) -> "Holder | None":
        """None for an empty or damaged record."""
        try:
            data = json.loads(payload.decode())
            return cls(str(data["host"]), int(data["pid"]), str(data["since"]), float(data.get("heartbeat", 0.0)), str(data.get("token", "")))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class SweepBusyError(DeferInputError):
    """Another driver holds the sweep; one line naming it."""


@contextmanager
def sweep_lock(layout: SweepLayout) -> Iterator[None]:
    """Hold OUT/.lock and, with a storage_uri, its lease, for the body; refuse (SweepBusyError)
    when another driver holds either. A directory created only for the lock is removed again."""
    with folder_lock(layout.root):
        if layout.storage_uri:
            with storage_lease(layout.results, layout.storage_uri):
                yield
        else:
            yield


# -- OUT/.lock --------------------------------------------------------------------------------------


@contextmanager
def folder_lock(root: Path) -> Iterator[Holder]:
    """flock OUT/.lock (creating OUT if needed) for the body; yields the holder record written."""
    created = _make_dirs(root)
    path = root / LOCK_FILE
    try:
        fd = _acquire(root, path)
    except BaseException:
        _remove_if_empty(created)
        raise
    me = Holder.me()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.to_json(), 0)
        yield me
    finally:
        path.unlink(missing_ok=True)  # before unlocking: whoever locks this file next sees it is gone
        os.close(fd)
        _remove_if_empty(created)


def _make_dirs(root: Path) -> list[Path]:
    """mkdir -p; returns the directories it created, deepest first."""
    missing = [p for p in (root, *root.parents) if not p.exists()]
    make_dirs(root, "the output directory")
    return missing


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the directories made for the lock that nothing else was put in."""
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return


def _acquire(root: Path, path: Path) -> int:
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # a driver that failed just now removed OUT
            root.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as error:
            raise DeferInputError(f"{path}: cannot open the sweep's lock file ({error.strerror or one_line(error)}); the output directory must be a writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(fd)
            os.close(fd)
            raise _busy(root, holder) from None
        except OSError as error:
            os.close(fd)
            raise DeferInputError(f"{path}: cannot lock the sweep's lock file ({error.strerror or one_line(error)}); the output directory must be on a filesystem with flock") from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the holder removed it while we waited for it: lock the new one
    raise DeferInputError(f"{path}: the lock file kept changing under us; is another defer-sweep starting on {root}?")


def _busy(root: Path, holder: Holder | None) -> SweepBusyError:
    return SweepBusyError(
        f"{root}: another defer-sweep driver is running this sweep ({holder.describe() if holder else 'holder unknown'}); "
        f"wait for it to end, or stop it and then run `defer-sweep resume {root}`"
    )


def check_not_busy(root: Path) -> None:
    """Refuse at once when another driver holds OUT/.lock: the quick check a command makes
    before its heavy imports and its first line of output. It takes nothing; sweep_lock still
    decides (a driver that starts in between is refused there)."""
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return  # no lock file: nobody holds it (or sweep_lock will say why it cannot be made)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(root, _holder_of(fd)) from None
    except OSError:
        return
    finally:
        os.close(fd)  # releases the probe's lock, if it got one


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _holder_of(fd: int) -> Holder | None:
    """The record in a lock file another driver holds (it writes it right after locking)."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        holder = Holder.from_json(os.pread(fd, 4096, 0))
        if holder is not None or time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


# -- <storage_uri>/lease.json ---------------------------------------------------------------------------


def read_lease(where: Location) -> Holder | None:
    payload = read_bytes(where, LEASE_FILE)
    return None if payload is None else Holder.from_json(payload) or Holder("?", 0, "?")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def is_stale(lease: Holder, timeout_s: float = LEASE_TIMEOUT_S, now: float | None = None) -> bool:
    """A dead driver's lease: its process on this host has ended, or its heartbeat is old
    (an unreadable lease has heartbeat 0, so it is stale too)."""
    if lease.host == socket.gethostname() and lease.pid > 0 and not pid_alive(lease.pid):
        return True
    return (time.time() if now is None else now) - lease.heartbeat > timeout_s


@contextmanager
def storage_lease(
    where: Location, uri: str, *, refresh_s: float = LEASE_REFRESH_S, timeout_s: float = LEASE_TIMEOUT_S, settle_s: float = LEASE_SETTLE_S
) -> Iterator[Holder]:
    """Hold <where>/lease.json for the body, refreshing its heartbeat from a daemon thread."""
    me = Holder.me()
    current = _io(uri, lambda: read_lease(where))
    if current is not None and not is_stale(current, timeout_s):
        raise _lease_busy(uri, where, current, timeout_s)
    if current is not None:
        log.warning("%s: taking over the lease of a driver that is gone (%s)", where.child(LEASE_FILE), current.describe())
    _io(uri, lambda: write_bytes(where, LEASE_FILE, me.to_json()))
    time.sleep(settle_s)
    confirmed = _io(uri, lambda: read_lease(where))
    if confirmed is None or confirmed.token != me.token:
        raise _lease_busy(uri, where, confirmed or Holder("?", 0, "?"), timeout_s)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(where, me, stop, refresh_s), name="defer-sweep-lease", daemon=True)
    beat.start()
    try:
        yield me
    finally:
        stop.set()
        beat.join()
        _release(where, me)


def _io(uri: str, call: Callable[[], T]) -> T:
    """Run one lease read/write; a storage problem is the one-line storage_uri error."""
    try:
        return call()
    except OSError as error:
        raise DeferInputError(f"key 'storage_uri' = {uri!r}: cannot read or write {LEASE_FILE} ({one_line(error)})") from None


def _lease_busy(uri: str, where: Location, holder: Holder, timeout_s: float) -> SweepBusyError:
    age = f", last heartbeat {time.time() - holder.heartbeat:.0f}s ago" if holder.heartbeat else ""
    return SweepBusyError(
        f"key 'storage_uri' = {uri!r}: another defer-sweep driver holds {where.child(LEASE_FILE)} ({holder.describe()}{age}); "
        f"it is taken over only once that process has ended or its heartbeat is older than {timeout_s:g}s"
    )


def _heartbeat(where: Location, me: Holder, stop: threading.Event, refresh_s: float) -> None:
    """Renew the lease until stopped; if another driver took it over, say so and stop."""
    while not stop.wait(refresh_s):
        try:
            current = read_lease(where)
            if current is None or current.token != me.token:
                log.error("%s: lost the lease to %s; this driver was taken for a dead one", where.child(LEASE_FILE), current.describe() if current else "nobody")
                return
            write_bytes(where, LEASE_FILE, Holder(me.host, me.pid, me.since, time.time(), me.token).to_json())
        except OSError as error:  # storage unreachable for a moment: try again next time
            log.warning("%s: could not renew the lease (%s)", where.child(LEASE_FILE), one_line(error))


def _release(where: Location, me: Holder) -> None:
    try:
        current = read_lease(where)
        if current is not None and current.token == me.token:
            delete_file(where, LEASE_FILE)
    except OSError as error:
        log.warning("%s: could not remove the lease (%s); it goes stale in %gs", where.child(LEASE_FILE), one_line(error), LEASE_TIMEOUT_S)
