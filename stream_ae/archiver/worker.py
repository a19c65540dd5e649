"""Where the archiver's work runs: one worker process (default) or inline, behind one interface.

The Kafka side hands each poll over as three buffers (:func:`pack`), in poll order, and
reads the answers in the same order from futures. The worker is spawned (no inherited
client sockets or locks) and killed with the job, even on SIGKILL, so that no orphan
goes on writing files after its job died.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import signal
import sys

import numpy as np

from stream_ae.archiver.core import ArchiveCore

_CORE: ArchiveCore | None = None


def _start_worker(kwargs: dict) -> None:
    global _CORE
    if sys.platform.startswith("linux"):   # die with the job, even on SIGKILL: no orphan writes files
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    for sig in (signal.SIGINT, signal.SIGTERM):   # the job decides when to stop; we die with it
        signal.signal(sig, signal.SIG_IGN)
    _CORE = ArchiveCore(**kwargs)


def call(method: str, *args):
    """Run ``ArchiveCore.<method>(*args)`` in the worker."""
    return getattr(_CORE, method)(*args)


def pack(batch: list) -> tuple[bytes, bytes, bytes]:
    """(offsets, lengths, joined values) of a poll's records: three buffers, cheap to pickle.

    >>> from types import SimpleNamespace as R
    >>> offsets, lengths, joined = pack([R(offset=7, value=b"ab"), R(offset=8, value=None)])
    >>> np.frombuffer(lengths, np.int64).tolist(), joined
    ([2, -1], b'ab\\n')
    """
    values = [r.value for r in batch]
    n = len(values)
    offsets = np.fromiter((r.offset for r in batch), np.int64, n)
    if None in values:   # a tombstone: length -1, nothing joined (the codec dead-letters it)
        lengths = np.array([-1 if v is None else len(v) for v in values], np.int64)
        values = [b"" if v is None else v for v in values]
    else:
        lengths = np.fromiter(map(len, values), np.int64, n)
    return offsets.tobytes(), lengths.tobytes(), b"\n".join(values)


class Inline:
    """The executor interface over an ArchiveCore in this process (``worker_process=False``)."""

    def __init__(self, kwargs: dict):
        self.core = ArchiveCore(**kwargs)

    def submit(self, fn, method, *args) -> cf.Future:
        fut = cf.Future()
        try:
            fut.set_result(getattr(self.core, method)(*args))
        except Exception as exc:   # handed to whoever reads the future, as a pool would
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True) -> None:
        pass


def start(core_kwargs: dict, in_process: bool = False):
    """An executor running one ArchiveCore: a spawned worker process, or inline.

    Use ``executor.submit(call, method, *args)``; answers come back in submission order.
    """
    if in_process:
        return Inline(core_kwargs)
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_start_worker, initargs=(core_kwargs,))
    pool.submit(call, "flush", []).result()   # spawn it (and its imports) now, from this thread
    return pool
