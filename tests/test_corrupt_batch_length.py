"""A CRC-failed batch whose *length* field is what is corrupt (it lies outside the CRC).

Its end is the base offset of the next batch header in the fetch, and where that header starts
comes from the suspect length. A length that lands inside a later batch's bytes on something
shaped like a header (magic 2, a base offset above the batch's) made the reader skip to that
offset: every record before it was lost without a letter holding its bytes. The reader now
checks the landed-on batch's own CRC when it is whole, and raises when it fails (a batch it
cannot skip safely, as before) rather than skip to a made-up offset.
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


def _length_lands_inside_the_next_batch() -> tuple[bytes, int]:
    """Batch 0-4, then batch 5-6 whose second record's value holds a header-shaped run of bytes that
    claims to end exactly at the fetch's end; the first batch's length is corrupted to land on it."""
    first = batch(0, readings(5))

    def second(length: int) -> bytes:
        return batch(5, [(1, b"k", b"x" * 40, []), (2, b"k", _value_shaped_like_a_header(length), [])])

    at = len(first) + second(0).find(b"<") + 1       # where the header-shaped bytes start in the fetch
    total = len(first) + len(second(0))
    data = bytearray(first + second(total - at - 12))  # its length: to the end of the fetch exactly
    struct.pack_into(">i", data, 8, at - 12)            # the first batch's length, bit-rotted
    return bytes(data), at


def test_the_probe_lands_where_it_means_to():
    data, at = _length_lands_inside_the_next_batch()
    assert struct.unpack_from(">qi", data, at) == (FAR, len(data) - at - 12) and data[at + 16] == 2


def test_a_length_that_lands_on_a_header_shaped_run_of_bytes_is_not_skipped_to():
    data, _ = _length_lands_inside_the_next_batch()
    cls = reader()
    assert fetch(cls, data, 0) == ([], 0)  # first fetch: fetched again
    with pytest.raises(CorruptRecordError, match="fails its CRC too"):
        fetch(cls, data, 0)  # before: one stand-in for offsets 0-999999, and records 5-6 lost


def test_a_crc_failed_batch_followed_by_a_sound_batch_is_still_skipped_to_it():
    data = crc_broken(batch(0, readings(5))) + batch(5, readings(2))
    cls = reader()
    fetch(cls, data, 0)
    got, next_offset = fetch(cls, data, 0)
    assert (got[0].first, got[0].offset) == (0, 4) and [r.offset for r in got[1:]] == [5, 6] and next_offset == 7
