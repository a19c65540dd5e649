"""The C allocator's settings for a process that runs the model over and over.

torch on the CPU takes every intermediate tensor from ``malloc`` and gives it back at once.
With glibc's defaults, blocks of a few MiB (the conv preset's layers over a micro-batch of
2 048 windows: 1-8 MiB each) are mapped fresh from the kernel and unmapped on release, or
trimmed off the heap's top, so every forward pass faults its pages in again: ~4 600 page
faults per 2 048 windows, a third of the scoring process's time spent in the kernel. Keeping
blocks up to 32 MiB on the heap (``M_MMAP_THRESHOLD``, glibc's largest) and up to 256 MiB of
free heap top (``M_TRIM_THRESHOLD``) lets the next pass reuse them: 150 passes of 2 048
windows (fp32, one thread) went from 914 k to 70 k page faults and 4.1 to 2.2 s.

The setting is process-wide and stays; the memory kept is what the largest pass needed, which
the process held at its peak anyway. Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)

#: Blocks up to this size come from the heap and are reused (glibc's maximum on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the heap's top kept before it is given back to the kernel.
TRIM_THRESHOLD = 256 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_applied: bool | None = None


def _libc(name: str):
    """The C library's function ``name``; None where there is none (not glibc, or too old)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; whether they are in force (False off glibc)."""
    global _applied
    if _applied is None:
        _applied = False
        mallopt = _libc("mallopt")
        if mallopt is None:
            log.debug("no glibc mallopt here: allocator settings left as they are")
            return False
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        _applied = all(mallopt(param, value) == 1 for param, value in
                       ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    return _applied


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_in_use_bytes() -> int | None:
    """Bytes the C allocator has handed out and not had back (glibc's ``mallinfo2``: heap
    blocks in use plus mapped ones); None off glibc 2.33+. Unlike the resident size, it does
    not hide a leak inside the free memory the settings above keep."""
    fn = _libc("mallinfo2")
    if fn is None:
        return None
    fn.restype = _MallInfo2
    info = fn()
    return int(info.uordblks + info.hblkhd)


def trim_free_memory() -> bool:
    """Give the free memory of every arena back to the kernel (glibc's ``malloc_trim(0)``:
    the heap's top and whole free pages inside it); False off glibc."""
    trim = _libc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    trim(0)
    return True


class PeriodicTrim:
    """A daemon thread that calls :func:`trim_free_memory` every ``interval_s``.

    The settings above keep what a scoring pass frees, so the next pass does not fault it in
    again. With micro-batches of many sizes on two scoring threads, each thread's arena then
    fragments: in a run of the whole runner its free memory went 12 -> 90 MiB in three minutes
    while the memory in use stayed ~10 MiB, and the resident size crept up with it. Trimming
    once a minute gives that back (100 MiB took 6 ms); the next pass faults in one pass's pages
    (a few ms) once per interval instead of on every pass. ``stop()`` ends the thread."""

    def __init__(self, interval_s: float = 60.0):
        self.interval_s = float(interval_s)
        self.trims = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-ae-malloc-trim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not trim_free_memory():
                return
            self.trims += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
