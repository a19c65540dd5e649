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
from pathlib import Path

import pytest

from stream_ae.archiver.writer import MARKER_DIR, PartitionState
from stream_ae.errors import DataError
from stream_ae.stream.broker import create_topics, delete_topics
from test_archiver import _archive, _archived, _overrides, _produce, _stream


def test_a_marker_keeps_the_topic_id_and_one_written_before_reads_as_none():
    state = PartitionState(through=9, topic_id="0197a3b4-0000-7000-8000-000000000001")
    assert PartitionState.from_json(state.to_json(), "m") == state
    older = json.dumps({"format": 1, "through": 9, "channels": [], "last_ts": {}, "pending": []}).encode()
    assert PartitionState.from_json(older, "m").topic_id is None


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
