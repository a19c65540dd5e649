"""A CRC-failed batch whose *length* field is what is corrupt (it lies outside the CRC).

Its end is the base offset of the next batch header in the fetch, and where that header starts
comes from the suspect length. A length that lands inside a later batch's bytes on something
shaped like a header (magic 2, a base offset above the batch's) made the reader skip to that
offset: every record before it was lost without a letter holding its bytes. The next header's
base offset is now trusted only when its batch passes its own CRC (it must be whole in the
fetch) or the base is where the batch's own offset span ends; else the reader raises (a batch
it cannot skip safely, as before) rather than skip to a made-up offset.
"""
from __future__ import annotations

import struct

import pytest
from kafka.errors import CorruptRecordError

from test_corrupt_batch import crc_broken, fetch, reader
from test_record_decoding import batch, readings

FAR = 10**6  # the base offset a header shaped inside a record value claims


def _value_shaped_like_a_header(length: int) -> bytes:
    return b"<" + struct.pack(">qii", FAR, length, 0) + b"\x02" + b"\0" * 80 + b">"  # a batch header's size and more


def _length_lands_inside_the_next_batch(past_the_end: int = 0) -> tuple[bytes, int]:
    """Batch 0-4, then batch 5-6 whose second record's value holds a header-shaped run of bytes that
    claims to end exactly at the fetch's end (or ``past_the_end`` bytes after it: cut short, so its
    CRC cannot be checked); the first batch's length is corrupted to land on it."""
    first = batch(0, readings(5))

    def second(length: int) -> bytes:
        return batch(5, [(1, b"k", b"x" * 40, []), (2, b"k", _value_shaped_like_a_header(length), [])])

    at = len(first) + second(0).find(b"<") + 1       # where the header-shaped bytes start in the fetch
    total = len(first) + len(second(0))
    data = bytearray(first + second(total - at - 12 + past_the_end))  # its length: to the fetch's end
    struct.pack_into(">i", data, 8, at - 12)            # the first batch's length, bit-rotted
    return bytes(data), at


def test_the_probe_lands_where_it_means_to():
    data, at = _length_lands_inside_the_next_batch()
    assert struct.unpack_from(">qi", data, at) == (FAR, len(data) - at - 12) and data[at + 16] == 2


@pytest.mark.parametrize("past_the_end", [0, 123_456])
def test_a_length_that_lands_on_a_header_shaped_run_of_bytes_is_not_skipped_to(past_the_end):
    data, _ = _length_lands_inside_the_next_batch(past_the_end)
    cls = reader()
    assert fetch(cls, data, 0) == ([], 0)  # first fetch: fetched again
    with pytest.raises(CorruptRecordError, match=r"\(offset 1000000\) and its own offset span \(to 4\) disagree"):
        fetch(cls, data, 0)  # before: one stand-in for offsets 0-999999, and records 5-6 lost


def test_two_crc_failed_batches_in_a_row_are_each_dead_lettered():
    """The second fails its CRC too, but its base offset is where the first's span ends: the layout
    is the log's, so both are skipped (a first fix of session 38 raised here, on every restart)."""
    data = crc_broken(batch(0, readings(5))) + crc_broken(batch(5, readings(5))) + batch(10, readings(3))
    cls = reader()
    fetch(cls, data, 0)
    got, next_offset = fetch(cls, data, 0)
    assert [(type(r).__name__, r.offset) for r in got] == [("CorruptBatch", 4)] and next_offset == 5
    got, next_offset = fetch(cls, data[len(batch(0, readings(5))):], 5)  # the second to fail on that fetch too
    assert [(r.first, r.offset) for r in got[:1]] == [(5, 9)] and [r.offset for r in got[1:]] == [10, 11, 12]
    assert next_offset == 13


def test_a_crc_failed_batch_followed_by_a_sound_batch_is_still_skipped_to_it():
    data = crc_broken(batch(0, readings(5))) + batch(5, readings(2))
    cls = reader()
    fetch(cls, data, 0)
    got, next_offset = fetch(cls, data, 0)
    assert (got[0].first, got[0].offset) == (0, 4) and [r.offset for r in got[1:]] == [5, 6] and next_offset == 7
