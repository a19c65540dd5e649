"""``consumer_process`` that freezes itself whole, once, at a chosen batch (the zombie test).

``STREAM_AE_TEST_FREEZE="entity,ts_ns,marker"``: the first process of a test to prepare a batch
holding ``entity``'s reading at ``ts_ns`` writes its pid to ``marker`` and stops itself with
SIGSTOP, every thread at once (its heartbeats too), until the test sends SIGCONT. Another
process that prepares that batch later (the member that takes the partition over) finds the
marker and goes on. The freeze lands before the batch is scored, so what the process does when
it wakes decides whether the alert this batch opens is published a second time.
"""
from __future__ import annotations

import os
import signal

import numpy as np

from stream_ae.stream import consumer_process
from stream_ae.stream.detector import Detector


def freeze_once_at(entity: str, ts_ns: int, marker: str) -> None:
    prepare = Detector.prepare

    def prepare_or_freeze(self, batch):
        if np.any((batch.entity == entity) & (batch.ts == ts_ns)):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGSTOP)
        return prepare(self, batch)

    Detector.prepare = prepare_or_freeze


if __name__ == "__main__":
    entity, ts_ns, marker = os.environ["STREAM_AE_TEST_FREEZE"].split(",")
    freeze_once_at(entity, int(ts_ns), marker)
    raise SystemExit(consumer_process.main())
