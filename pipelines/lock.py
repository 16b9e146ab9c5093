"""One writer per store: the ingest lock ``<out>/<dataset>.zarr.lock``.

Two ingests into the same store would delete and rewrite each other's arrays, so the ingest driver holds
a lock for as long as it may write: a small JSON object next to the store (local file or ``s3://``
object)::

    {"owner": {"host", "pid", "pid_started", "user", "uuid", "boot_id", "pid_ns"},
     "dataset", "store", "started", "heartbeat" (UTC ISO times), "heartbeat_unix", "heartbeat_every_s"}

* **Acquire** is an atomic create: ``link(2)`` of a fully written temporary file on a local disk (fails if
  the lock exists, so a reader never sees a half-written lock), a conditional PUT (``If-None-Match: *``)
  on S3. Object stores that ignore the condition are covered by writing, waiting ``settle_s`` and reading
  the lock back: the writer whose owner id is not the one read back gives up. The remaining race window on
  such a store is one request round trip (two writers that both see no lock and both PUT within it); AWS
  S3, MinIO >= 2024 and moto honour the condition, so there is no window there.
* **Held** by someone else with a fresh heartbeat: :class:`LockHeld`, one line naming the owner and since
  when. The ingest turns it into exit code 2 before it touches anything.
* **Stale**: the heartbeat is older than ``timeout_s`` (and three heartbeat periods of the owner), or the
  owner is a process of this machine that no longer exists (same host, boot and PID namespace; the PID's
  start time guards against PID reuse). The lock is taken over, and :meth:`StoreLock.acquire` returns a
  warning naming the previous owner. Locally the takeover renames the stale file away first (only one
  taker can win the rename); on S3 it is overwrite, then read back.
* **Heartbeat**: a daemon thread rewrites the lock every ``heartbeat_every_s`` after checking that it is
  still the owner; if another writer has taken the lock over (this process stalled longer than the
  timeout), :attr:`StoreLock.lost` is set and :meth:`StoreLock.check` raises :class:`LockLost`, so the
  ingest stops before it records anything more.
* **Release** deletes the lock if it is still ours (also on errors: the ingest releases it in ``finally``).

Clocks: staleness compares the owner's wall-clock heartbeat with the reader's clock, so hosts sharing a
store on S3 need clocks within a fraction of the timeout (minutes by default); NTP gives milliseconds.
"""

from __future__ import annotations

import datetime as _dt
import errno
import getpass
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Any

import psutil

from pipelines.storage import filesystem, is_remote

#: Seconds without a heartbeat after which a lock is considered abandoned (``--lock-timeout``).
DEFAULT_TIMEOUT_S = 300.0


class LockHeld(Exception):
    """Another live writer holds the lock (message: one line naming it)."""


class LockLost(Exception):
    """This writer's lock was taken over by another one."""


def lock_url(store_url: str) -> str:
    """URL of the lock of the store at ``store_url`` (a sibling object, so that removing or recreating the
    store, which the ingest does under the lock, never removes the lock)."""
    return f"{str(store_url).rstrip('/')}.lock"


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def host_identity() -> dict[str, Any]:
    """This machine and PID namespace: a dead PID on the same one means the owner is gone."""
    ident: dict[str, Any] = {"host": socket.gethostname(), "boot_id": _read_text("/proc/sys/kernel/random/boot_id")}
    try:
        ident["pid_ns"] = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ident["pid_ns"] = None
    return ident


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def owner_is_dead(owner: dict) -> bool:
    """True only when the owner provably no longer runs: a process of this very machine (host, boot, PID
    namespace) whose PID is gone or now belongs to a process started at another time."""
    here = host_identity()
    if not owner or any(owner.get(k) != here[k] for k in ("host", "boot_id", "pid_ns")) or here["boot_id"] is None:
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    if not psutil.pid_exists(pid):
        return True
    started = _process_started(pid)
    want = owner.get("pid_started")
    return started is not None and isinstance(want, (int, float)) and abs(started - want) > 1.0


def describe(lock: dict, now: float | None = None) -> str:
    """``pid 123 on host (user, started ..., last heartbeat 5 s ago)`` for messages."""
    now = time.time() if now is None else now
    o = lock.get("owner") or {}
    hb = lock.get("heartbeat_unix")
    age = f", last heartbeat {max(0.0, now - hb):.0f} s ago" if isinstance(hb, (int, float)) else ""
    return (f"pid {o.get('pid', '?')} on {o.get('host', '?')} ({o.get('user', '?')}, since "
            f"{lock.get('started', '?')}{age})")


class StoreLock:
    """The ingest lock of one store. ``acquire()`` (raises :class:`LockHeld`), ``start_heartbeat()``,
    ``check()`` before anything destructive, ``release()`` at the end; or use it as a context manager."""

    def __init__(self, store_url: str, storage_options: dict | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 heartbeat_every_s: float | None = None, dataset: str = "", settle_s: float = 0.5):
        if not timeout_s > 0:
            raise ValueError(f"lock timeout must be positive, got {timeout_s}")
        self.store_url = str(store_url).rstrip("/")
        self.url = lock_url(self.store_url)
        self.storage_options = dict(storage_options or {})
        self.timeout_s = float(timeout_s)
        self.heartbeat_every_s = float(heartbeat_every_s or max(0.05, min(30.0, self.timeout_s / 4)))
        self.dataset = dataset
        self.settle_s = settle_s
        self.remote = is_remote(self.url)
        self.fs, self.path = filesystem(self.url, self.storage_options)
        self.id = uuid.uuid4().hex
        self.started = time.time()
        self.held = False
        self.lost: str | None = None
        """Why the lock was lost (the new owner), or ``None``."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()

    # -- content --------------------------------------------------------------------------------------
    def _content(self) -> bytes:
        now = time.time()
        pid = os.getpid()
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry in some containers
            user = str(os.getuid()) if hasattr(os, "getuid") else "?"
        owner = {**host_identity(), "pid": pid, "pid_started": _process_started(pid), "user": user, "uuid": self.id}
        return json.dumps({"owner": owner, "dataset": self.dataset, "store": self.store_url,
                           "started": _iso(self.started), "heartbeat": _iso(now), "heartbeat_unix": now,
                           "heartbeat_every_s": self.heartbeat_every_s}, sort_keys=True).encode()

    def read(self) -> dict | None:
        """The lock as stored (``{"unparsable": True, "mtime": ...}`` for a damaged one), or ``None``."""
        try:
            if self.remote:
                self.fs.invalidate_cache(self.path)
            with self.fs.open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            lock = json.loads(raw)
            if not isinstance(lock, dict):
                raise ValueError("not an object")
            return lock
        except ValueError:
            try:
                mtime = self.fs.modified(self.path).timestamp()
            except Exception:
                mtime = None
            return {"unparsable": True, "heartbeat_unix": mtime}

    def _is_ours(self, lock: dict | None) -> bool:
        return bool(lock) and (lock.get("owner") or {}).get("uuid") == self.id

    def stale_reason(self, lock: dict, now: float | None = None) -> str | None:
        """Why ``lock`` may be taken over, or ``None`` if its owner may still be alive."""
        now = time.time() if now is None else now
        if owner_is_dead(lock.get("owner") or {}):
            return "its process no longer exists"
        hb = lock.get("heartbeat_unix")
        every = lock.get("heartbeat_every_s")
        limit = max(self.timeout_s, 3 * float(every) if isinstance(every, (int, float)) else 0.0)
        if isinstance(hb, (int, float)) and now - hb > limit:
            return f"its last heartbeat is {now - hb:.0f} s old (lock timeout {self.timeout_s:.0f} s)"
        return None

    # -- primitive writes -----------------------------------------------------------------------------
    def _create(self, data: bytes) -> bool:
        """Atomically create the lock with ``data``; False if a lock exists."""
        if self.remote:
            try:
                self.fs.pipe_file(self.path, data, mode="create")
            except FileExistsError:
                return False
            except (NotImplementedError, TypeError):
                if self.fs.exists(self.path):  # a store without conditional writes: check, write, verify
                    return False
                self.fs.pipe_file(self.path, data)
            return True
        self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{self.id}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, self.path)  # atomic, fails if the lock exists, and the content is complete
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:  # a filesystem without hard links: exclusive create (readers treat a short-lived empty
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # lock as held)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _overwrite(self, data: bytes) -> None:
        if self.remote:
            self.fs.pipe_file(self.path, data)
            return
        tmp = f"{self.path}.{self.id}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def _take_over(self, stale: dict) -> bool:
        """Replace the stale lock ``stale`` by ours; False if someone else changed it meanwhile."""
        if self.remote:
            self._overwrite(self._content())
            return True
        aside = f"{self.path}.stale-{self.id}"
        try:
            os.rename(self.path, aside)  # only one taker wins this rename
        except FileNotFoundError:
            return self._create(self._content())
        try:
            with open(aside, "rb") as f:
                moved = json.loads(f.read() or b"{}")
        except (OSError, ValueError):
            moved = {}
        same = (moved.get("owner") or {}).get("uuid") == (stale.get("owner") or {}).get("uuid")
        if not same and not stale.get("unparsable"):
            # a fresh lock slipped in between our read and the rename: put it back and give up
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return self._create(self._content())

    def _verify(self) -> dict | None:
        """Read the lock back after ``settle_s`` on stores that may not honour conditional writes."""
        if self.remote and self.settle_s:
            time.sleep(self.settle_s)
        return self.read()

    # -- the protocol ---------------------------------------------------------------------------------
    def acquire(self) -> str | None:
        """Take the lock; returns a warning line when a stale lock was taken over, raises :class:`LockHeld`."""
        warning = None
        for _ in range(3):
            current = self.read()
            if current is None:
                if not self._create(self._content()):
                    continue  # someone created it between our read and our create: look again
            else:
                why = self.stale_reason(current)
                if why is None:
                    raise LockHeld(self._held_message(current))
                if not self._take_over(current):
                    continue
                warning = (f"took over the ingest lock {self.url} of {describe(current)}: {why}; "
                           "its partial work is resumed")
            back = self._verify() if self.remote else self.read()
            if not self._is_ours(back):
                if back is None:
                    continue
                raise LockHeld(self._held_message(back))
            self.held = True
            return warning
        current = self.read() or {}
        raise LockHeld(self._held_message(current))

    def _held_message(self, lock: dict) -> str:
        if lock.get("unparsable"):
            who = "an unreadable lock (a writer may be creating it)"
        else:
            who = describe(lock)
        return (f"{self.store_url} is being written by another ingest: {who}; wait for it to finish, or, if "
                f"it is dead, delete {self.url} or rerun once its heartbeat is older than --lock-timeout "
                f"({self.timeout_s:.0f} s)")

    def refresh(self) -> bool:
        """Rewrite the heartbeat if the lock is still ours; False (and :attr:`lost` set) if it is not."""
        with self._io:
            if not self.held or self.lost:
                return False
            current = self.read()
            if not self._is_ours(current):
                self.lost = describe(current) if current else "nobody (the lock was deleted)"
                return False
            self._overwrite(self._content())
            return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every_s):
            try:
                if not self.refresh() and self.lost:
                    return
            except Exception:  # a transient I/O error: try again next period; staleness needs many misses
                continue

    def start_heartbeat(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name=f"ingest-lock-heartbeat {self.url}",
                                            daemon=True)
            self._thread.start()

    def check(self, verify: bool = False) -> None:
        """Raise :class:`LockLost` if the lock is no longer ours (``verify`` reads it now)."""
        if verify and self.held and not self.lost:
            with self._io:
                current = self.read()
                if not self._is_ours(current):
                    self.lost = describe(current) if current else "nobody (the lock was deleted)"
        if self.lost:
            raise LockLost(f"lost the ingest lock {self.url} to {self.lost} (this process stalled for longer "
                           f"than the lock timeout, {self.timeout_s:.0f} s); stopped without recording more")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.heartbeat_every_s))
            self._thread = None
        with self._io:
            if not self.held:
                return
            self.held = False
            try:
                if self._is_ours(self.read()):
                    self.fs.rm(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> StoreLock:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
