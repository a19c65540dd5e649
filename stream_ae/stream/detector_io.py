"""What the streaming detector takes and gives: a micro-batch of readings, in columns, and
what scoring it produced (events, dead-letter reasons, counts, the scores themselves), and how
a batch's readings group by entity."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ReadingBatch:
    """Decoded readings of one micro-batch, in poll order (columnar)."""

    entity: np.ndarray  # (N,) object: str entity ids
    ts: np.ndarray  # (N,) int64 ns since epoch
    values: np.ndarray  # (N, C) float32, channel order = the model's; NaN = missing
    partition: np.ndarray  # (N,) int64 Kafka partition (-1: not from Kafka)
    offset: np.ndarray  # (N,) int64 Kafka offset
    record_ts: np.ndarray | None = None  # (N,) int64 ns, each record's Kafka timestamp (<= 0: none); None: none

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_arrays(cls, entity, ts, values, partition=None, offset=None, record_ts=None) -> "ReadingBatch":
        """Build a batch; without Kafka coordinates, partition -1 (never skipped as a replay)."""
        n = len(ts)
        return cls(
            entity=np.asarray(entity, dtype=object),
            ts=np.asarray(ts, dtype=np.int64),
            values=np.asarray(values, dtype=np.float32).reshape(n, -1),
            partition=np.full(n, -1, np.int64) if partition is None else np.asarray(partition, np.int64),
            offset=np.arange(n, dtype=np.int64) if offset is None else np.asarray(offset, np.int64),
            record_ts=None if record_ts is None else np.asarray(record_ts, np.int64),
        )


@dataclass
class DetectorOutput:
    """What one micro-batch produced."""

    events: list = field(default_factory=list)  # AlertEvent, in entity then time order
    event_index: list = field(default_factory=list)  # per event: batch index of the reading that caused it
    rejected: list = field(default_factory=list)  # (batch index, reason) for dead letters
    windows_scored: int = 0
    skipped: int = 0  # replayed readings already in the state
    suppressed: int = 0  # events already published before a restart
    scoring_s: float = 0.0
    entities: list = field(default_factory=list)  # entity ids touched by this batch
    # every window scored, in entity then time order: a read-only tap (drift watch, demo plot)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))    # (B,)
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))           # (B,)
    # (B,) ns: the time of each window's partition just after it (silence.PartitionClocks.around): its
    # end, no later than its last reading's Kafka record timestamp (a sensor clock a day ahead moves
    # no horizon), no earlier than the partition's time before it
    end_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def group_by_entity(entity: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(names, order, counts)``: the entity ids in order of first appearance, the batch
    indices entity by entity (each entity's in poll order), and how many each has.

    ``pandas.factorize`` hashes the ids (4x faster than sorting them with ``np.unique`` for a
    micro-batch of 1024 readings) and numbers them in order of first appearance."""
    import pandas as pd

    if len(entity) == 1:
        return [entity[0]], np.zeros(1, np.int64), np.ones(1, np.int64)
    codes, names = pd.factorize(entity)
    return names.tolist(), np.argsort(codes, kind="stable"), np.bincount(codes, minlength=len(names))


def nothing_replayed(states: list, part: np.ndarray, off: np.ndarray, counts: np.ndarray,
                      first: np.ndarray) -> np.ndarray:
    """(E,) bool: entity i's readings (``part``/``off`` entity by entity) come from one
    partition and none of them is already in its state (see :meth:`Detector._skip_replayed`)."""
    seg = np.repeat(np.arange(len(states)), counts)
    p0 = part[first]
    nxt = np.fromiter((s.offsets.get(p, -1) if s.offsets else -1 for s, p in zip(states, p0.tolist())),
                      np.int64, len(states))
    odd = (part != p0[seg]) | ((off < nxt[seg]) & (part >= 0))
    return np.bincount(seg, weights=odd, minlength=len(states)) == 0
