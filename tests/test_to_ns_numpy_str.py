"""Times given as numpy strings (``np.datetime64(...).astype(str)`` gives ``np.str_``): pandas 3.0
refuses them in ``pd.Timestamp``, so ``to_ns`` stopped ``stream-ae bench drift`` with "is not a
time" on the H100 machine of session 38 (pandas 3.0.6); pandas 3.1 takes them."""
from __future__ import annotations

import numpy as np
import pytest

from stream_ae.data.history import to_ns
from stream_ae.errors import ConfigError


def test_a_numpy_string_is_a_time_as_its_str_is():
    when = np.datetime64(1_000_000_000, "ns").astype(str)
    assert isinstance(when, np.str_)
    assert to_ns(when) == to_ns(str(when)) == 1_000_000_000


def test_a_numpy_string_that_is_not_a_time_says_so():
    with pytest.raises(ConfigError, match="end=.*is not a time"):
        to_ns(np.str_("yesterday-ish"), "end")
