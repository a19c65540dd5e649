"""Process settings a latency-sensitive consumer runs under, each undone when it stops.

* **torch threads** (``batch.torch_threads``): one intra-op thread by default; on a few
  shared cores a second one fights the Kafka I/O thread.
* **GIL switch interval** 0.1 ms instead of Python's 5 ms: the model's thread takes the GIL
  to enter and leave the scoring graph and for the NumPy around it; each time it waits up to
  one interval behind the polling thread. The detector run (b) of ``stream-ae bench stream``,
  fp32, three runs each:
  65-68 k readings/s at 0.5 ms, 71-75 k at 0.1 ms, 73-76 k at 0.05 ms.
* **a frozen start-up heap** (``gc.freeze``): what start-up allocated (modules, torch, the
  model, the clients: ~100 k objects) leaves the garbage collector's reach. Each full
  collection walked all of it, 100-200 ms with the GIL held, every few seconds: it was the
  p99 of the ingest-to-alert latency (300 -> 170 ms in ``stream-ae bench stream``).
* **the allocator keeps freed blocks** (:mod:`stream_ae.allocator`; process-wide, not undone):
  each scoring pass reuses the last one's memory instead of faulting fresh pages in; and a
  thread gives the arenas' free memory back every ``TRIM_INTERVAL_S`` (``PeriodicTrim``), so
  the fragmentation of many micro-batch sizes does not grow the resident size for months.
"""
from __future__ import annotations

import contextlib
import gc
import sys

from stream_ae.allocator import PeriodicTrim, keep_freed_memory

#: Python's GIL switch interval while a consumer runs (seconds).
SWITCH_INTERVAL_S = 0.0001
#: Seconds between two returns of the allocator's free memory to the kernel.
TRIM_INTERVAL_S = 60.0


def tune_process(stack: contextlib.ExitStack, torch_threads: int) -> None:
    """Apply the settings above; ``stack`` restores each one on exit. Call it last in start-up
    (after the model and the clients exist), so the frozen heap holds them.
    ``torch_threads`` 0 keeps torch's default."""
    import torch

    if keep_freed_memory():
        stack.callback(PeriodicTrim(TRIM_INTERVAL_S).stop)
    stack.callback(sys.setswitchinterval, sys.getswitchinterval())
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
    if torch_threads:
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(torch_threads)
    gc.collect()
    gc.freeze()
    stack.callback(gc.unfreeze)
