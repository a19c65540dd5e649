"""A revoke after a produce already failed: no checkpoint can be written, but the partitions are
forgotten all the same (nothing more is published for them) and the next poll stops the loop."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest
from test_stream_detector import make_artifact, plant
from test_stream_runner import reading_bytes

from stream_ae.errors import StreamAEError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_revoke_after_a_failed_produce_forgets_the_partitions_and_the_next_poll_stops():
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.settings import load_settings

    runner = StreamRunner(load_settings(env={}, overrides=["model.device=cpu", "batch.max_wait_ms=0"]),
                          make_artifact())
    sent = []
    runner._publisher = SimpleNamespace(  # an earlier alert's produce failed
        failed=True, forget=lambda parts: None, alert=lambda event, ingest: sent.append(event.entity),
        dead_letter=lambda letter: sent.append((letter.source_partition, letter.source_offset)))
    runner._checkpointer = SimpleNamespace(due=lambda: False, release=lambda parts: None)
    runner._consumer = SimpleNamespace(poll=lambda **kw: {})
    runner.metrics.update_lag = lambda consumer: None
    runner.membership = SimpleNamespace(confirm=lambda: True, fresh=lambda: True, forget=lambda parts: None)
    runner._assigned, runner._next_offsets = {0, 1}, {0: 100, 1: 50}
    Rec = namedtuple("Rec", "topic partition offset key value timestamp")
    ent, ts, vals = plant(n_rows=5, entities=("pump-a",))
    held = [Rec("readings", 0, 100 + i, b"pump-a", reading_bytes(*r), 0) for i, r in enumerate(zip(ent, ts, vals))]
    runner.batcher.add(0, held + [Rec("readings", 0, 105, b"pump-a", b"{not json", 0)])

    with pytest.raises(StreamAEError, match="could not be produced"):  # what kafka-python would log
        runner.on_revoked([namedtuple("TP", "partition")(0)])
    assert runner._assigned == {1} and 0 not in runner._next_offsets
    with pytest.raises(StreamAEError, match="checkpoint of revoked partitions failed"):
        runner.step()
    assert sent == []  # nothing published for the partition another member now owns
