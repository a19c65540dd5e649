"""Whether this member of the consumer group may still act for its partitions.

The group gives a member's partitions to another member when it stops heartbeating for
``session_timeout_ms`` (the whole process frozen: a long garbage collection, SIGSTOP, a
virtual machine paused or swapping) or stops polling for ``max_poll_interval_ms`` (its poll
loop stuck, for instance waiting on a model thread). kafka-python tells the member at a later
poll, through ``on_partitions_lost``. A member that wakes from such a stall does not know yet:
whatever it publishes before that poll (alerts, state records, archive files) repeats what
the new owner publishes after restoring from the last checkpoint. This is a "zombie" member.

Kafka fences zombies with transactions, which the embedded broker cannot abort (its aborted
transactions stay visible, ``../shared/KAFKA.md``). So the guard here uses the group itself:

* ``confirm()`` runs before each poll. If the last confirmation is older than ``stall_s`` (half
  the time in which the group can evict a member), it first commits, synchronously, offsets
  whose commit was acknowledged before (were a newer asynchronous commit still in flight, the
  group's position would go back to them: harmless, since the stream's state topic and the
  archive's own marker say where a partition resumes). The group coordinator refuses a commit from a member it
  has evicted (``UnknownMemberId``, ``IllegalGeneration``), and kafka-python then calls
  ``on_partitions_lost`` at the next poll.
* ``fresh()`` is checked by the caller right before it publishes. After a stall it stays False
  until a ``confirm()`` succeeds, so the work of a batch waits for the next poll: it is
  published if the membership holds, and dropped in ``on_lost`` if not.

A stall that falls between ``fresh()`` and the send it guards, a few milliseconds of work, can
still publish once more; only transactions close that. Positions are the offsets a commit
has covered, or the offset a restored partition resumes from; a partition with neither is
left out of the probe, and with no positions at all there is nothing to probe with:
``confirm()`` then returns True.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger(__name__)


class GroupMembership:
    """The readings topic's group membership, as seen by one consumer's poll loop.

    Parameters
    ----------
    consumer : kafka.KafkaConsumer
        The group member (its ``config`` gives the session, heartbeat and poll timeouts).
    topic : str
        The subscribed topic.
    clock : callable
        Monotonic seconds (injectable for tests).
    """

    def __init__(self, consumer, topic: str, clock: Callable[[], float] = time.monotonic):
        cfg = consumer.config
        evict_ms = min(cfg["session_timeout_ms"] - cfg["heartbeat_interval_ms"], cfg["max_poll_interval_ms"])
        self.stall_s = max(evict_ms, 0) / 2000
        self.consumer, self.topic, self._clock = consumer, topic, clock
        self._confirmed_at = clock()
        self.positions: dict[int, int] = {}  # partition -> an offset committed or resumed from
        self._owned: set[int] = set()
        self.probes = self.refused = 0

    def fresh(self) -> bool:
        """Whether nothing has stalled for ``stall_s`` since the membership was last confirmed."""
        return self._clock() - self._confirmed_at < self.stall_s

    def confirm(self) -> bool:
        """Before a poll: True if the membership is fresh or a probing commit is accepted."""
        now = self._clock()
        if now - self._confirmed_at < self.stall_s or self._probe():
            self._confirmed_at = now
            return True
        return False

    def _probe(self) -> bool:
        from kafka import TopicPartition
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        if not self.positions:
            return True
        self.probes += 1
        offsets = {TopicPartition(self.topic, p): OffsetAndMetadata(o, None, -1) for p, o in self.positions.items()}
        try:
            self.consumer.commit(offsets, timeout_ms=max(int(self.stall_s * 1000), 1000))
        except CommitFailedError as exc:
            self.refused += 1
            log.warning("the group evicted this member during a %.1f s stall (%s); nothing more is "
                        "published for its partitions: the next owner replays them from the last "
                        "checkpoint", self._clock() - self._confirmed_at, exc)
            return False
        except KafkaError as exc:  # the coordinator is unreachable: nothing is published until it answers
            log.warning("could not confirm the group membership after a stall (%r); retrying", exc)
            return False
        log.info("membership confirmed after a %.1f s stall", self._clock() - self._confirmed_at)
        return True

    def assigned(self, partitions, positions: dict[int, int]) -> None:
        """Partitions taken on; ``positions``: those whose resume offset is known (where a
        restart would replay from too)."""
        self._owned |= set(partitions)
        self.positions.update(positions)

    def commit(self, positions: dict[int, int], *, blocking: bool) -> None:
        """Commit ``positions`` (partition -> next offset); failures are logged, not raised:
        the state topic's positions, not the commit, say where a partition resumes."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        if not positions:
            return
        offsets = {TopicPartition(self.topic, p): OffsetAndMetadata(o, None, -1) for p, o in positions.items()}
        if not blocking:  # in a rebalance listener, with a rebalance under way: the state topic says where to resume
            self.consumer.commit_async(offsets, callback=self._committed)
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:  # lost the partitions meanwhile
            self._committed(offsets, exc)
        else:
            self._committed(offsets, None)

    def _committed(self, offsets: dict, response) -> None:
        if isinstance(response, BaseException):
            log.warning("commit of %s failed (%r); the next owner resumes from this consumer's own "
                        "record (the state topic, the archive)", offsets, response)
        else:  # on whichever thread polled or committed; a partition forgotten meanwhile stays forgotten
            self.positions.update({tp.partition: om.offset for tp, om in offsets.items()
                                   if tp.partition in self._owned})

    def forget(self, partitions) -> None:
        """Partitions revoked or lost."""
        for p in partitions:
            self._owned.discard(p)
            self.positions.pop(p, None)
