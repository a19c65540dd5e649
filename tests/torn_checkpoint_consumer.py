"""``consumer_process`` that dies inside a checkpoint's write, once (the torn-checkpoint test).

``STREAM_AE_TEST_TEAR="n,marker"``: on the ``n``-th checkpoint write that holds entity records,
the real write (``Checkpointer._write``) runs until it is about to send the first position
record; then the entity records already handed to the producer are flushed (they land, as
they would have once sent), ``marker`` is written and the process ends at once with
``os._exit(86)``: no position record, no commit, no shutdown, as a SIGKILL would leave it.
"""
from __future__ import annotations

import os

from stream_ae.stream import consumer_process
from stream_ae.stream.checkpoint import FENCE_PREFIX, PARTITION_KEY, Checkpointer

TORN_EXIT = 86


class _Tearing:
    """The producer, but the first position record it is given ends the process."""

    def __init__(self, producer, marker: str):
        self._producer, self._marker = producer, marker

    def __getattr__(self, name):
        return getattr(self._producer, name)

    def send(self, topic, key=None, **kwargs):
        if key is not None and key.startswith(PARTITION_KEY.encode()) and not key.startswith(FENCE_PREFIX):
            self._producer.flush()
            with open(self._marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(TORN_EXIT)
        return self._producer.send(topic, key=key, **kwargs)


def tear_at(n: int, marker: str) -> None:
    write, writes = Checkpointer._write, []

    def tearing_write(self, states, positions, started):
        if states:
            writes.append(len(states))
            if len(writes) == n:
                self.producer = _Tearing(self.producer, marker)
        return write(self, states, positions, started)

    Checkpointer._write = tearing_write


if __name__ == "__main__":
    n, marker = os.environ["STREAM_AE_TEST_TEAR"].split(",")
    tear_at(int(n), marker)
    raise SystemExit(consumer_process.main())
