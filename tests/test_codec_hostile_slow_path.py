"""Messages that reach the codec's slow path (NaN / Infinity tokens) are classified in time linear
in their size and never raise: the consumer must not crash, or stall, on input.

Before: ~850 bytes nesting a list 400 deep beside a NaN raised RecursionError out of
``decode`` (the service exited, and its restart met the same record); 2000 NaN channels and a
long list took ~2 s of the poll thread; a BOM or UTF-16 message with a NaN channel was told to
"send null"; ``"values": 1e400`` was ``non_finite``; ``input.max_future_s = inf`` was accepted and
every decode then raised OverflowError."""

from __future__ import annotations

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.codec import ReadingDecoder
from stream_ae.stream.settings import load_settings


def reasons(*messages, **kwargs):
    ok, bad = ReadingDecoder(**kwargs).decode(list(messages))
    return [(b.reason, b.detail) for b in bad], ok


@pytest.mark.parametrize("unknown_fields", ["reject", "ignore"])
def test_deep_nesting_beside_a_nan_is_a_malformed_letter(unknown_fields):
    deep = b'{"values":{"a":NaN},"z":' + b"[" * 400 + b"0" + b"]" * 400 + b',"y":NaN,"entity":"e","ts":1}'
    bad, ok = reasons(deep, b'{"entity":"e","ts":2,"values":{"a":1.0}}', unknown_fields=unknown_fields)
    assert [r for r, _ in bad] == ["malformed"] and len(ok) == 1


def test_many_nan_channels_and_a_long_list_are_classified():
    """(~2 s of CPU before, quadratic; the time is measured in the session note, not asserted here.)"""
    channels = ",".join(f'"c{i}":NaN' for i in range(2000))
    big = f'{{"entity":"e","ts":1,"values":{{{channels}}},"z":[{",".join(["0"] * 20000)}],"y":NaN}}'.encode()
    bad, _ = reasons(big, max_bytes=1 << 20)
    assert bad == [("malformed", "NaN/Infinity is not JSON, and 'y' takes no such value")]


@pytest.mark.parametrize("data", [
    b'\xef\xbb\xbf{"entity":"e","ts":1,"values":{"a":NaN}}',
    '{"entity":"e","ts":1,"values":{"a":NaN}}'.encode("utf-16"),
    '{"entity":"e","ts":1,"values":{"a":NaN}}'.encode("utf-32"),
])
def test_a_bom_or_another_encoding_is_malformed_not_a_missing_value(data):
    (reason, detail), = reasons(data)[0]
    assert reason == "malformed" and "send null" not in detail


def test_out_of_range_numbers_are_non_finite_only_as_a_channel_value():
    assert [r for r, _ in reasons(b'{"entity":"e","ts":1,"values":{"a":1e400}}')[0]] == ["non_finite"]
    assert [r for r, _ in reasons(b'{"entity":"e","ts":1,"values":1e400}')[0]] == ["malformed"]


def test_an_infinite_future_limit_is_refused_at_start():
    with pytest.raises(ConfigError, match="input.max_future_s must be a finite number"):
        load_settings(env={}, overrides=["input.max_future_s=inf"])
    with pytest.raises(ValueError, match="finite number above 0"):
        ReadingDecoder(max_future_s=float("inf"))
