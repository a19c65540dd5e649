"""The allocator settings keep freed buffers in the process (stream_ae/allocator.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from stream_ae.allocator import heap_in_use_bytes, keep_freed_memory

# 50 rounds of 8 live buffers of 4 MiB, written and then freed together, as a forward pass's
# intermediates are: with glibc's defaults the freed 32 MiB is trimmed off the heap each round and
# faulted in again (~8 000 page faults a round); kept, the first round's pages serve them all.
CHURN = """
import resource, sys
import numpy as np
from stream_ae.allocator import heap_in_use_bytes, keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def one_round():
    live = [np.ones(1 << 20, np.float32) for _ in range(8)]
    return sum(float(a[-1]) for a in live)
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    one_round()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], check=True, capture_output=True, text=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not keep_freed_memory(), reason="glibc only")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 100_000  # each round's ~8 000 pages faulted in again
    assert kept < default / 20, (kept, default)


def test_applying_twice_is_harmless():
    assert keep_freed_memory() == keep_freed_memory()


@pytest.mark.skipif(heap_in_use_bytes() is None, reason="glibc 2.33+ only (mallinfo2)")
def test_the_heap_in_use_counts_a_live_block_and_not_a_freed_one_the_allocator_keeps():
    import numpy as np

    keep_freed_memory()
    before = heap_in_use_bytes()
    block = np.ones(2 * 2**20)  # 16 MiB: on the heap under the kept mmap threshold
    held = heap_in_use_bytes()
    del block
    after = heap_in_use_bytes()
    assert held - before >= 16 * 2**20 and abs(after - before) < 2**20


TRIM = """
import numpy as np
from stream_ae.allocator import PeriodicTrim, keep_freed_memory
from stream_ae.bench.soak import rss_mib as rss
print(keep_freed_memory())
blocks = [np.ones(2**19) for _ in range(25)]  # 100 MiB in 4 MiB blocks, on the heap
held = rss()
del blocks
kept = rss()
trim = PeriodicTrim(0.05)
import time; time.sleep(0.5)
trim.stop()
print(held, kept, rss(), trim.trims)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not keep_freed_memory(), reason="glibc only")
def test_the_periodic_trim_gives_back_what_the_settings_keep():
    out = subprocess.run([sys.executable, "-c", TRIM], check=True, capture_output=True, text=True).stdout
    applied, figures = out.split("\n", 1)
    held, kept, trimmed, trims = (float(x) for x in figures.split())
    assert applied == "True" and trims >= 1
    assert kept > held - 10  # freed, but kept by the allocator settings
    assert trimmed < kept - 80, (held, kept, trimmed)  # given back to the kernel
