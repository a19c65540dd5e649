"""Times given as numpy strings (``np.datetime64(...).astype(str)`` gives ``np.str_``): pandas 3.0
refuses them in ``pd.Timestamp`` ("Expected str, got numpy.str_"), so ``to_ns`` stopped ``stream-ae
bench drift`` with "is not a time" on the H100 machine of session 38 (pandas 3.0.6). pandas 3.1, which
this machine has, takes them, so the test stands in pandas 3.0's refusal."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stream_ae.data.history import to_ns
from stream_ae.errors import ConfigError


@pytest.fixture
def pandas_3_0(monkeypatch):
    real = pd.Timestamp

    def timestamp(value, *args, **kwargs):
        if isinstance(value, np.str_):
            raise TypeError("Expected str, got numpy.str_")
        return real(value, *args, **kwargs)

    monkeypatch.setattr(pd, "Timestamp", timestamp)


def test_a_numpy_string_is_a_time_as_its_str_is(pandas_3_0):
    when = np.datetime64(1_000_000_000, "ns").astype(str)
    assert isinstance(when, np.str_)
    assert to_ns(when) == to_ns(str(when)) == 1_000_000_000


def test_a_numpy_string_that_is_not_a_time_says_so(pandas_3_0):
    with pytest.raises(ConfigError, match="end=.*is not a time"):
        to_ns(np.str_("yesterday-ish"), "end")
