"""A fetched record batch the client cannot read, handed over as one record: the dead letter ``corrupt_batch``.

Before, a batch whose CRC failed, or whose records could not be decoded (a record header key that
is not UTF-8, which a non-Java producer can send; a payload that does not decompress), made
kafka-python raise from ``poll()`` before any of its records was seen: the service exited, and
every restart met the batch again. Now the record reader (``record_decoding.py``) fetches such a
batch once more, since a CRC failure can be the network's and a new fetch reads the log again. If
it is still unreadable, the reader hands over one :class:`CorruptBatch` in its place and moves on.

It flows as a record of its partition, so nothing new is needed downstream:

* the micro-batch carries it, and its ``offset`` is the batch's *last* offset: a commit passes the
  batch only once the micro-batch holding it is finished, its dead letter acknowledged first;
* the decoder turns it into the dead letter ``corrupt_batch`` (``codec.ReadingDecoder.decode``),
  with the batch's bytes as ``original``, its *first* offset as ``source_offset`` (the same on every
  fetch, so a restart finds the letter already published) and the offsets it spans in ``detail``.

A batch whose CRC failed is skipped only up to the next batch header of its fetch, and not under
read_committed (it might be a transaction marker); otherwise it still raises, as before: skipping
it would be a guess (``record_decoding``'s ``_unreadable``). A batch whose magic byte (outside the
CRC) is not 2 is unreadable too; one whose length field is shorter than a batch header raises on
the second fetch, since where it ends is unknown.
"""
from __future__ import annotations

from typing import Any, NamedTuple


class _Source(NamedTuple):
    """What a dead letter reads of its record (``codec._record_fields``)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: None
    value: bytes


class CorruptBatch:
    """The stand-in for the records of one unreadable batch (offsets ``first`` to ``offset``)."""

    __slots__ = ("topic", "partition", "offset", "first", "timestamp", "key", "value", "headers", "detail")

    def __init__(self, topic: str, partition: int, first: int, last: int, data: bytes, why: str,
                 timestamp: int | None = None):
        self.topic, self.partition, self.first, self.offset = topic, partition, first, last
        self.timestamp = timestamp if timestamp is not None and timestamp >= 0 else None
        self.key, self.value, self.headers = None, data, []
        n = last - first + 1
        self.detail = (f"the record batch at offsets {first}-{last} ({n} offset{'s' if n != 1 else ''}) of "
                       f"{topic}-{partition} {why}, on two fetches; its records were skipped unread and "
                       "`original` holds the batch's bytes. Find the producer or broker that wrote it")

    def source(self) -> _Source:
        """The record a dead letter describes: the batch's first offset."""
        return _Source(self.topic, self.partition, self.first, self.timestamp, None, self.value)

    def __repr__(self) -> str:
        return f"CorruptBatch({self.topic}-{self.partition}, offsets {self.first}-{self.offset})"


def first_offset(record: Any) -> int:
    """The first offset a polled record stands for: a stand-in's batch's first, else its own."""
    return record.first if type(record) is CorruptBatch else record.offset
