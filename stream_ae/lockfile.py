"""An exclusive lock held through a file on a local disk (or NFS), freed by the kernel when its holder dies.

The lock is an ``flock`` on the file, not the file's existence. A holder killed with ``kill -9``
(or a host that crashed, on NFS once its lease runs out) releases it at once, so there is no
"stale lock" to guess about and break: breaking one by age or by a dead pid lets two waiters
that both judged it stale each delete the other's fresh lock and both go on. The holder
deletes the file before it lets go; a waiter that locked the deleted file sees that its path
names another file (or none) and tries again. On NFS, hosts exclude each other only where the
mount passes locks to the server (not with ``nolock`` or ``local_lock=flock``).

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), ".job.lock")
>>> with exclusive(path, timeout_s=1, busy=lambda holder: RuntimeError(holder)):
...     held = holder_of(path)["pid"] == os.getpid()
>>> held, os.path.exists(path)
(True, False)
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import time
from typing import Callable, Iterator


def holder_of(path: str) -> dict:
    """What the holder wrote in the lock file (pid, host, since); {} when unknown."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _acquire(path: str) -> int | None:
    """A locked descriptor of the file at ``path`` now, or None when another holds it."""
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        except PermissionError:   # another user's file (a shared registry): a read-only one locks as well
            fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)   # the holder deleted it as we opened it: lock the file the path names now


@contextlib.contextmanager
def exclusive(path: str, timeout_s: float, busy: Callable[[dict], Exception],
              poll_s: float = 0.01) -> Iterator[None]:
    """Hold the lock at ``path``; after ``timeout_s`` of waiting, raise ``busy(holder)``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while (fd := _acquire(path)) is None:
        if time.monotonic() >= deadline:
            raise busy(holder_of(path))
        time.sleep(poll_s)
    try:
        with contextlib.suppress(OSError):   # read-only (another user's file): the holder goes unnamed
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": dt.datetime.now(dt.timezone.utc).isoformat()}).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):   # not a file someone put in its place
                os.unlink(path)   # while still locked: see the module doc
        os.close(fd)
