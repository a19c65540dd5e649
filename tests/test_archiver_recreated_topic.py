"""A readings topic deleted and created again under the same name: its offsets start at 0 again.

The archiver resumed at max(committed, last archived + 1) from its marker, so on the new topic it
skipped the records up to the old topic's last archived offset without a word, and the files of
the ones it did archive took the names of the old topic's files (a name is a function of the
topic, partition and offsets), replacing them where the dates met. The marker now keeps the
topic's id (Kafka 2.8 and later give one; the embedded broker does too), and taking a partition
whose topic has another id stops with a message that says what to do.
"""
from __future__ import annotations

import json
import time
from collections import namedtuple
from pathlib import Path

import pytest

from stream_ae.archiver.core import ArchiveCore
from stream_ae.archiver.worker import pack
from stream_ae.archiver.writer import MARKER_DIR, PartitionState
from stream_ae.errors import DataError
from stream_ae.stream.broker import create_topics, delete_topics
from test_archiver import T0_MS, _archive, _archived, _overrides, _produce, _reading, _stream

OLD, NEW = "0197a3b4-0000-7000-8000-00000000000a", "0197a3b4-0000-7000-8000-00000000000b"


def _core_with_a_file(root) -> ArchiveCore:
    core = ArchiveCore("t", str(root))
    core.recover(0, OLD)
    core.ingest(0, *pack([_Record(i, _reading("a", T0_MS + i * 1000, {"flow": 1.0})) for i in range(3)]))
    core.flush()
    return core


def test_a_marker_keeps_the_topic_id_and_one_written_before_reads_as_none():
    state = PartitionState(through=9, topic_id="0197a3b4-0000-7000-8000-000000000001")
    assert PartitionState.from_json(state.to_json(), "m") == state
    older = json.dumps({"format": 1, "through": 9, "channels": [], "last_ts": {}, "pending": []}).encode()
    assert PartitionState.from_json(older, "m").topic_id is None


_Record = namedtuple("record", "offset value")


def test_a_restart_on_another_topic_id_stops_and_says_what_to_do(tmp_path):
    _core_with_a_file(tmp_path)
    again = ArchiveCore("t", str(tmp_path))
    with pytest.raises(DataError, match=f"offsets through 2 of topic id {OLD}, but the topic now has id {NEW}"):
        again.recover(0, NEW)
    assert ArchiveCore("t", str(tmp_path)).recover(0, OLD) == 2   # the same topic: resumes
    assert ArchiveCore("t", str(tmp_path)).recover(0, None) == 2  # a broker that gives no id: no check


def test_an_id_that_changes_while_the_partitions_are_held_stops_before_more_is_archived(tmp_path):
    """A topic deleted and created again with as many partitions causes no rebalance: the job
    passes every new id it sees to the worker before the poll's records."""
    core = _core_with_a_file(tmp_path)
    core.adopt_topic_id(OLD)
    with pytest.raises(DataError, match="deleted and created again"):
        core.adopt_topic_id(NEW)
    fresh = ArchiveCore("t", str(tmp_path / "other"))
    fresh.recover(0, None)     # no id yet at assignment (metadata without one): taken when seen
    fresh.adopt_topic_id(NEW)
    fresh.ingest(0, *pack([_Record(0, _reading("a", T0_MS, {"flow": 1.0}))]))
    fresh.flush()
    assert json.loads((tmp_path / "other" / MARKER_DIR / "t" / "00000.json").read_text())["topic_id"] == NEW


@pytest.mark.kafka
def test_a_recreated_topic_stops_the_archiver_instead_of_skipping_and_overwriting(broker, topic_factory,
                                                                                   kafka_config, tmp_path):
    topic, dlq = topic_factory(partitions=1), topic_factory(partitions=1)
    msgs, expected = _stream(20, ["a", "b"])
    _produce(broker.bootstrap, topic, msgs)
    root = tmp_path / "archive"
    _archive(_overrides(broker, kafka_config, topic, dlq, root), len(msgs))
    marker = json.loads((Path(root) / MARKER_DIR / topic / "00000.json").read_text())
    assert marker["through"] == len(msgs) - 1 and marker["topic_id"]   # the embedded broker gives ids

    delete_topics(broker.bootstrap, [topic])
    time.sleep(0.5)
    create_topics(broker.bootstrap, {topic: 1})
    _produce(broker.bootstrap, topic, msgs[:10])   # offsets 0-9 again, with other records
    with pytest.raises(DataError, match="deleted and created again"):
        _archive(_overrides(broker, kafka_config, topic, dlq, root), 10)
    assert sorted(_archived(root)) == sorted(expected)   # the old topic's archive is untouched
