"""``non_finite`` is a channel value's reason: NaN / Infinity or an overflow elsewhere (``ts``,
``entity``, ``schema_version``, ``values`` itself) is ``malformed``, with a detail naming the field
instead of advice to send null (a null ``ts`` is malformed too)."""
from __future__ import annotations

import pytest

from stream_ae.stream.codec import ReadingDecoder


@pytest.mark.parametrize("blob, reason, says", [
    (b'{"entity":"e","ts":1,"values":{"a":NaN,"b":1}}', "non_finite",
     "NaN/Infinity is not JSON (channel 'a'); send null for a missing value"),
    (b'{"entity":"e","ts":1,"values":{"a":1e400}}', "non_finite", "Number out of range - at `$.values"),
    (b'{"entity":"e","ts":NaN,"values":{"a":1}}', "malformed", "NaN/Infinity is not JSON, and 'ts' takes no such value"),
    (b'{"entity":NaN,"ts":1,"values":{"a":1}}', "malformed", "'entity' takes no such value"),
    (b'{"entity":"e","ts":1,"values":-Infinity}', "malformed", "'values' takes no such value"),
    (b'{"entity":"e","ts":1,"values":{"a":[NaN]}}', "malformed", "got `array`"),
    (b'{"entity":"e","ts":1e400,"values":{"a":1}}', "malformed", "Number out of range - at `$.ts`"),
    (b'{"entity":"e","ts":1,"values":{"a":1},"schema_version":1e400}', "malformed", "at `$.schema_version`"),
])
def test_the_reason_says_where_the_non_finite_number_is(blob, reason, says):
    ok, bad = ReadingDecoder().decode([blob])
    assert not ok and bad[0].reason == reason and says in bad[0].detail, (bad[0].reason, bad[0].detail)
