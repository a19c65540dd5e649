"""Hostile readings that stopped a consumer for good (it re-read them on every restart), or
that one path refused and another took."""

from __future__ import annotations

import hashlib
from collections import namedtuple

import numpy as np
import pytest

from stream_ae.stream import codec
from stream_ae.stream.columns import decode_columns
from test_archiver import T0_MS, _reading

_Record = namedtuple("record", "topic partition offset key value timestamp")


def _record(value: bytes, offset: int = 9) -> _Record:
    return _Record("readings", 0, offset, b"pump-1", value, 0)


def test_the_dead_letter_of_a_huge_reading_fits_a_produce_request():
    """A 800 kB reading made a 1.07 MB letter that kafka-python refused to send (its
    max_request_size is 1 MiB): the detector stopped, and stopped again on every restart."""
    value = b'{"entity":"pump-1","ts":1,"values":{"a":1.0},"pad":"' + b"x" * 800_000 + b'"}'
    ok, bad = codec.decode_readings([_record(value)])
    assert ok == [] and [b.reason for b in bad] == ["oversized"]
    letter = bad[0]
    assert letter.original == value[:codec.ORIGINAL_MAX_BYTES]
    assert f"first {codec.ORIGINAL_MAX_BYTES} of its {len(value)} bytes" in letter.detail
    assert hashlib.sha256(value).hexdigest() in letter.detail   # what a replay checks it fetched
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("readings", 0, 9)
    assert len(codec.encode_dead_letter(letter)) < 1_000_000
    small = codec.decode_readings([_record(b"not json")])[1][0]
    assert small.original == b"not json" and "sha256" not in small.detail


@pytest.mark.parametrize("ts", ["2300-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z"])
def test_the_archiver_dead_letters_a_time_outside_the_epoch_span_as_the_stream_does(tmp_path, ts):
    """The archiver raised OverflowError out of ingest for 2300 and 0001 (a crash loop), and
    wrote 1969 to a date=1969-12-31 file, where the detector dead-letters all three."""
    from stream_ae.archiver.core import ArchiveCore
    from stream_ae.archiver.worker import pack

    values = [_reading("a", T0_MS + i * 1000, {"flow": float(i)}) for i in range(3)]
    values.insert(1, b'{"entity":"a","ts":"%s","values":{"flow":1.0}}' % ts.encode())
    core = ArchiveCore("t", str(tmp_path))
    core.recover(0)
    out = core.ingest(0, *pack([namedtuple("r", "offset value")(i, v) for i, v in enumerate(values)]))
    core.flush()
    assert [(i, reason) for i, reason, _, _ in out.dead_letters] == [(1, "malformed")]
    assert "outside 1970-01-01 to 2262-04-11" in out.dead_letters[0][2]
    assert not list(tmp_path.glob("date=1969*"))


def test_a_reserved_entity_id_is_refused_on_every_path(tmp_path):
    """Only the detector's column path refused it; the codec took it, and the archiver wrote
    it into the history that retraining reads."""
    from stream_ae.archiver.core import ArchiveCore
    from stream_ae.archiver.worker import pack

    value = _reading("__partition__/0", T0_MS, {"flow": 1.0})
    ok, bad = codec.decode_readings([_record(value)])
    assert ok == [] and [(b.reason, b.entity) for b in bad] == [("malformed", "__partition__/0")]
    assert "reserved" in bad[0].detail
    columns, bad = decode_columns(codec.ReadingDecoder(), [_record(value)], ("flow",))
    assert len(columns.entity) == 0 and [b.reason for b in bad] == ["malformed"]
    core = ArchiveCore("t", str(tmp_path))
    core.recover(0)
    out = core.ingest(0, *pack([namedtuple("r", "offset value")(0, value)]))
    assert [reason for _, reason, _, _ in out.dead_letters] == ["malformed"]


def test_float32_s_own_maximum_is_a_valid_value_and_beyond_it_is_not():
    """3.4028235e+38 is how a float32 writer prints its largest value; the codec called it
    beyond float32 range (it compared with the float64 nearest the maximum)."""
    top = float(np.float32(3.4028235e38))
    for text, reason in ((b"3.4028235e+38", None), (repr(top).encode(), None), (b"3.4028236e+38", "non_finite")):
        value = b'{"entity":"e","ts":1,"values":{"a":%s}}' % text
        ok, bad = codec.decode_readings([_record(value)])
        assert [b.reason for b in bad] == ([reason] if reason else []), text
        columns, bad = decode_columns(codec.ReadingDecoder(), [_record(value)], ("a",))
        assert [b.reason for b in bad] == ([reason] if reason else []), text
        if reason is None:
            assert np.isfinite(columns.values).all()


def test_a_memoryview_value_with_nan_is_a_dead_letter_not_an_exception():
    ok, bad = codec.decode_readings([memoryview(b'{"entity":"e","ts":1,"values":{"a":NaN}}')])
    assert ok == [] and [b.reason for b in bad] == ["non_finite"]
