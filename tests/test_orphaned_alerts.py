"""An alert a previous owner published open, that the takeover's replay does not carry on, is
resolved once every replay has passed that owner (``stream/orphans.py``; session 36's review).

The case: a consumer is killed right after publishing an ``open``, after its last checkpoint;
the next owner restores the checkpoint and replays the readings since, but with another model
(a restart onto a newly promoted version), which does not flag them. Before, the ``open`` on
the alerts topic was never followed by a ``resolved``.
"""
from __future__ import annotations

import numpy as np
import pytest

from stream_ae.scoring import ScoreBatch, Scorer
from stream_ae.stream import codec
from stream_ae.stream.checkpoint import decode_state
from stream_ae.stream.detector_io import ReadingBatch
from test_stream_detector import make_artifact, make_detector, plant

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CHUNK = 64


class Calmer:
    """Another model version of the same shape whose scores stay low on this fault."""

    def __init__(self, base):
        self.base, self.version = base, "v2-calmer"
        self.channels, self.length, self.window, self.artifact = base.channels, base.length, base.window, base.artifact

    def score_rows(self, rows, starts):
        sb = self.base.score_rows(rows, starts)
        return ScoreBatch(sb.score * 1e-3, sb.channel_error * 1e-3)


def feed(detector, data, lo, hi, log):
    ent, ts, vals = data
    for a in range(lo, hi, CHUNK):
        b = min(a + CHUNK, hi)
        out = detector.process(ReadingBatch.from_arrays(ent[a:b], ts[a:b], vals[a:b], np.zeros(b - a, np.int64),
                                                        np.arange(a, b)))
        log.extend((a + i, e) for e, i in zip(out.events, out.event_index))


def crash_after_the_first_open():
    """A run up to a checkpoint, then on until just after its first ``open`` (then killed): the
    checkpoint's entity snapshots and clocks, and the events published after it."""
    v1 = Scorer(make_artifact(), device="cpu")
    data = plant()
    whole = []
    feed(make_detector(v1), data, 0, len(data[1]), whole)
    first_open = min(o for o, e in whole if e.state == "open")
    checkpoint_at, crash_at = (first_open // CHUNK) * CHUNK - CHUNK, first_open + 1
    first, published = make_detector(v1), []
    feed(first, data, 0, checkpoint_at, published)
    snapshots = {e: decode_state(r) for e, (_, r) in first.table.take_dirty().items()}
    clocks = dict(first.clocks.now)
    after = []
    feed(first, data, checkpoint_at, crash_at, after)
    on_topic = {e.event_id: codec.encode_alert(codec.alert_message(e)) for _, e in after}
    assert [e.state for _, e in after] == ["open"]
    return v1, data, checkpoint_at, snapshots, clocks, on_topic, whole


def next_owner(scorer, snapshots, clocks, on_topic):
    detector = make_detector(scorer)
    for entity, snap in snapshots.items():
        detector.restore(entity, snap)
    for p, clock in clocks.items():
        detector.clocks.resume(p, clock)
    detector.suppress(on_topic)
    return detector


def test_an_open_the_replay_does_not_carry_on_is_resolved_once_the_replay_has_passed_its_owner():
    v1, data, checkpoint_at, snapshots, clocks, on_topic, whole = crash_after_the_first_open()
    detector = next_owner(v1, snapshots, clocks, on_topic)
    detector.swap_scorer(Calmer(v1))   # the restart loaded the newly promoted version
    replayed = []
    feed(detector, data, checkpoint_at, len(data[1]), replayed)
    assert replayed == []               # the calmer model flags nothing: the open is not derived again
    opened = codec.decode_alert(next(iter(on_topic.values())))
    closing = detector.forget_published()
    assert [(e.alert_id, e.state, e.sequence, e.event_id) for e in closing] == \
        [(opened.alert_id, "resolved", 1, f"{opened.alert_id}-1")]
    e = closing[0]
    assert (e.entity, e.model_version, e.score, e.threshold, e.severity) == \
        (opened.entity, opened.model_version, opened.score, opened.threshold, opened.severity)
    assert e.at >= codec.datetime_to_ns(opened.at)
    codec.decode_alert(codec.encode_alert(codec.alert_message(e)))   # a valid alert event on the wire
    assert detector.forget_published() == []   # once


def test_a_replay_that_carries_the_alert_on_closes_nothing():
    v1, data, checkpoint_at, snapshots, clocks, on_topic, whole = crash_after_the_first_open()
    detector = next_owner(v1, snapshots, clocks, on_topic)
    replayed = []
    feed(detector, data, checkpoint_at, len(data[1]), replayed)
    published = [e for _, e in whole if e.event_id in on_topic]
    assert [e.event_id for _, e in replayed] == [e.event_id for o, e in whole if o >= checkpoint_at
                                                 and e.event_id not in on_topic]
    assert published and detector.forget_published() == []


def test_an_alert_of_an_entity_this_consumer_does_not_hold_is_not_its_to_close():
    v1, data, checkpoint_at, snapshots, clocks, on_topic, whole = crash_after_the_first_open()
    entity = codec.decode_alert(next(iter(on_topic.values()))).entity
    detector = next_owner(v1, {e: s for e, s in snapshots.items() if e != entity}, clocks, on_topic)
    detector.swap_scorer(Calmer(v1))
    ent, ts, vals = data
    keep = ent != entity   # another member's partition holds that entity
    feed(detector, (ent[keep], ts[keep], vals[keep]), 0, int(keep.sum()), [])
    assert detector.forget_published() == []


def test_an_alert_a_restored_state_holds_open_is_its_tracker_to_resolve():
    """The rebalance case: the checkpoint came after the ``open``, which a restore still reads
    (the alerts topic is read from the oldest checkpoint of the partitions it takes), and the
    new owner resolves the alert itself: nothing more to close."""
    v1 = Scorer(make_artifact(), device="cpu")
    data = plant()
    whole = []
    feed(make_detector(v1), data, 0, len(data[1]), whole)
    first_open = min(o for o, e in whole if e.state == "open")
    checkpoint_at = (first_open // CHUNK + 1) * CHUNK
    first, published = make_detector(v1), []
    feed(first, data, 0, checkpoint_at, published)
    snapshots = {e: decode_state(r) for e, (_, r) in first.table.take_dirty().items()}
    on_topic = {e.event_id: codec.encode_alert(codec.alert_message(e)) for _, e in published}
    detector = next_owner(v1, snapshots, dict(first.clocks.now), on_topic)
    replayed = []
    feed(detector, data, checkpoint_at, len(data[1]), replayed)
    assert "resolved" in [e.state for _, e in replayed]
    assert detector.forget_published() == []
