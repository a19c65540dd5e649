"""A reading stamped far ahead of the clock is refused, so one sender with a broken clock does
not make every later reading of its entity ``out_of_order`` until wall time catches up."""

from __future__ import annotations

from collections import namedtuple

import pyarrow.parquet as pq
import pytest

from stream_ae.stream import codec
from stream_ae.stream.columns import decode_columns
from test_archiver import T0_MS, _reading

_Record = namedtuple("record", "topic partition offset key value timestamp")
FAR = 4_070_908_800_000   # 2099-01-01 in epoch ms: a clock fault, far past any horizon


def _records(values):
    return [_Record("readings", 0, i, b"a", v, 0) for i, v in enumerate(values)]


def _stream(future_at: int = 2):
    """Entity ``a``: four readings a second apart from T0 (in the past), one from 2099 at ``future_at``."""
    values = [_reading("a", T0_MS + i * 1000, {"flow": float(i)}) for i in range(4)]
    values.insert(future_at, _reading("a", FAR, {"flow": 9.0}))
    return values


@pytest.mark.parametrize("extra", [False, True], ids=["whole-batch path", "message-by-message path"])
def test_the_column_path_refuses_a_reading_from_2099_and_keeps_the_rest(extra):
    values = _stream()
    if extra:  # a reading with another channel takes the batch off the one-call path
        values.append(_reading("b", T0_MS, {"other": 1.0}))
    cols, bad = decode_columns(codec.ReadingDecoder(max_future_s=86_400), _records(values), ("flow",))
    assert cols.ts_ns.tolist() == [(T0_MS + i * 1000) * 1_000_000 for i in range(4)]
    future = [b for b in bad if b.source_offset == 2]
    assert [(b.reason, b.entity) for b in future] == [("malformed", "a")]
    assert "ts 2099-01-01T00:00:00Z is" in future[0].detail and "input.max_future_s = 86400" in future[0].detail


def test_the_codec_refuses_it_only_past_the_horizon():
    now_s = T0_MS / 1000
    at = lambda dt_s: _Record("r", 0, 0, b"a", _reading("a", int((now_s + dt_s) * 1000), {"flow": 1.0}), 0)  # noqa
    decoder = codec.ReadingDecoder(max_future_s=3600, clock=lambda: now_s)
    ok, bad = decoder.decode([at(3599), at(3601)])
    assert len(ok) == 1 and [b.reason for b in bad] == ["malformed"] and "1.0 h ahead" in bad[0].detail
    assert len(codec.ReadingDecoder(clock=lambda: now_s).decode([at(10**6)])[0]) == 1   # no limit: kept
    with pytest.raises(ValueError, match="max_future_s"):
        codec.ReadingDecoder(max_future_s=0)


def test_the_archiver_keeps_the_entity_s_later_readings(tmp_path):
    """It archived the 2099 reading (into a date=2099-01-01 file) and dead-lettered every
    later reading of the entity as out_of_order."""
    from stream_ae.archiver.core import ArchiveCore
    from stream_ae.archiver.worker import pack

    core = ArchiveCore("t", str(tmp_path), max_future_s=86_400)
    core.recover(0)
    out = core.ingest(0, *pack(_records(_stream(future_at=1))))
    core.flush()
    assert [(i, reason) for i, reason, _, _ in out.dead_letters] == [(1, "malformed")]
    assert not list(tmp_path.glob("**/date=2099*"))
    rows = sum(pq.read_table(f).num_rows for f in tmp_path.glob("**/*.parquet"))
    assert rows == 4


def test_the_stream_and_the_archiver_take_the_limit_from_the_input_settings():
    from stream_ae.archiver.job import Archiver
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.settings import load_settings
    from test_stream_detector import make_artifact

    art = make_artifact()
    for overrides, expected in (([], 86_400.0), (["input.max_future_s=600"], 600.0), (["input.max_future_s=0"], None)):
        s = load_settings(env={}, overrides=["model.device=cpu", *overrides])
        assert StreamRunner(s, art).decoder.max_future_s == expected
        assert Archiver(s)._core_kwargs()["max_future_s"] == expected
