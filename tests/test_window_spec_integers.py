"""WindowSpec takes integers for its counts (session 36's review): 60.0 passed every check,
the artifact's window/model check too (60.0 == 60), and broke the first window's slice."""
import numpy as np
import pytest

from stream_ae.data.windows import WindowSpec
from stream_ae.errors import ConfigError


@pytest.mark.parametrize("field", ["length", "hop", "max_fill"])
@pytest.mark.parametrize("value", [5.0, True, "5"])
def test_a_count_that_is_not_an_integer_is_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"WindowSpec.{field} must be"):
        WindowSpec(**{field: value})


def test_numpy_integers_are_taken_as_ints():
    spec = WindowSpec(length=np.int64(30), hop=np.int32(2), max_fill=np.int64(0))
    assert (spec.length, spec.hop, spec.max_fill) == (30, 2, 0)
    assert all(type(v) is int for v in (spec.length, spec.hop, spec.max_fill))
    assert WindowSpec.from_dict(spec.to_dict()) == spec
