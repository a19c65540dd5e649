"""The promotion and training locks: one holder at a time, and a dead holder frees them at once.

Both used to be a file whose existence was the lock, broken when it looked stale (older than
30 s for a promotion; a dead pid on the same host for a training run). A live promotion held
past 30 s was then broken under its holder, a crashed promotion blocked every other one for
30 s, and a training run that died on another host left a lock only a person could remove.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from stream_ae import lockfile
from stream_ae.registry import PromotionConflict, Registry
from stream_ae.retraining.job import STATE_DIR, RetrainBusy, _training_lock
from test_registry_guards import registry  # noqa: F401  (fixture)


def _hold_in_a_thread(context):
    """Enter ``context`` on a thread; returns (entered, release) events."""
    entered, release = threading.Event(), threading.Event()

    def hold():
        with context:
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert entered.wait(5)
    return thread, release


def test_a_promotion_held_longer_than_30_s_is_not_broken_under_its_holder(registry):  # noqa: F811
    reg, (v1, _) = registry
    thread, release = _hold_in_a_thread(reg._locked("prod"))
    lock = os.path.join(str(reg.root), "deployments", ".prod.lock")
    old = time.time() - 120
    os.utime(lock, (old, old))   # what the old rule took for a crashed holder
    reg.lock_timeout_s = 0.3
    try:
        with pytest.raises(PromotionConflict, match=r"locked by another promotion .*'pid': %d" % os.getpid()):
            reg.promote("prod", v1)
        assert reg.current("prod") is None
    finally:
        release.set()
        thread.join(5)
    reg.promote("prod", v1)   # free again once its holder is done
    assert reg.current("prod") == v1 and not os.path.exists(lock)


_HOLD_AND_DIE = """
import os, sys, time
from stream_ae import lockfile
with lockfile.exclusive(sys.argv[1], timeout_s=5, busy=RuntimeError):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_promotion_killed_while_holding_the_lock_does_not_block_the_next(registry):  # noqa: F811
    reg, (v1, _) = registry
    lock = os.path.join(str(reg.root), "deployments", ".prod.lock")
    child = subprocess.Popen([sys.executable, "-c", _HOLD_AND_DIE, lock], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert os.path.exists(lock)   # left behind, as after a kill -9
    reg.lock_timeout_s = 2.0
    started = time.monotonic()
    reg.promote("prod", v1)
    assert reg.current("prod") == v1 and time.monotonic() - started < 1.5


def test_a_training_lock_left_by_a_run_that_died_on_another_host_is_free(tmp_path):
    reg = Registry(tmp_path / "models")
    folder = tmp_path / "models" / STATE_DIR / "prod"
    folder.mkdir(parents=True)
    fp = "ab" * 32
    (folder / f".train-{fp[:16]}.lock").write_text(json.dumps({"pid": 1, "host": "a-host-that-crashed"}))
    with _training_lock(reg, "prod", fp, timeout_s=0.5):
        pass


def test_a_busy_training_lock_names_its_holder(tmp_path):
    reg = Registry(tmp_path / "models")
    fp = "cd" * 32
    thread, release = _hold_in_a_thread(_training_lock(reg, "prod", fp, 5.0))
    try:
        with pytest.raises(RetrainBusy, match=r"another retrain of 'prod' .*'pid': %d" % os.getpid()):
            with _training_lock(reg, "prod", fp, timeout_s=0.3):
                pass
    finally:
        release.set()
        thread.join(5)
    with _training_lock(reg, "prod", fp, timeout_s=0.5):   # and free once released
        pass


def _contend(lock: str, marker: str, rounds: int, overlaps) -> None:
    for _ in range(rounds):
        with lockfile.exclusive(lock, timeout_s=30, busy=RuntimeError, poll_s=0.001):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL)   # exists only while someone is inside
            except FileExistsError:
                with overlaps.get_lock():
                    overlaps.value += 1
                continue
            os.close(fd)
            time.sleep(0.0005)
            os.unlink(marker)


def test_processes_contending_for_one_lock_never_hold_it_together(tmp_path):
    lock, marker = str(tmp_path / ".x.lock"), str(tmp_path / "inside")
    overlaps = multiprocessing.get_context("fork").Value("i", 0)
    procs = [multiprocessing.get_context("fork").Process(target=_contend, args=(lock, marker, 60, overlaps))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert overlaps.value == 0
    assert not os.path.exists(lock)   # each holder deletes it as it lets go


def test_a_lock_file_of_another_user_is_locked_read_only(tmp_path, monkeypatch):
    """A shared registry: the file another user created (mode 0644) opens read-only, which locks as well."""
    real_open = os.open

    def as_another_user(path, flags, *mode):
        if flags & os.O_RDWR and os.path.exists(path):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *mode)

    lock = str(tmp_path / ".x.lock")
    thread, release = _hold_in_a_thread(lockfile.exclusive(lock, timeout_s=1, busy=RuntimeError))
    monkeypatch.setattr(lockfile.os, "open", as_another_user)
    try:
        with pytest.raises(TimeoutError):   # waits for the holder, then says busy; not a PermissionError
            with lockfile.exclusive(lock, timeout_s=0.3, busy=lambda holder: TimeoutError(holder)):
                pass
    finally:
        release.set()
        thread.join(5)
    (tmp_path / ".x.lock").write_text("{}")   # left behind by a holder that was killed
    with lockfile.exclusive(lock, timeout_s=1, busy=RuntimeError):
        assert lockfile.holder_of(lock) == {}   # it could not write its name into a read-only file
    assert not os.path.exists(lock)
