"""A missing channel's "did you mean" never names another channel the same read asks for."""
from __future__ import annotations

import pytest

from stream_ae.data.history import History
from stream_ae.data.layout import Layout
from stream_ae.errors import DataError
from test_history import write


def test_a_missing_channel_is_not_told_to_be_a_sibling_the_model_also_reads(tmp_path):
    path = write(tmp_path, ch_5=[1.0, 2.0])
    with pytest.raises(DataError, match="'ch_4' not found") as err:
        History.open(path, Layout(channels=("ch_4", "ch_5")))  # ch_5 is read for itself: no hint of it
    assert "Did you mean" not in str(err.value)
    path = write(tmp_path, "renamed.parquet", ch_5=[1.0, 2.0], ch_4_raw=[1.0, 2.0])
    with pytest.raises(DataError, match="'ch_4' not found") as err:
        History.open(path, Layout(channels=("ch_4", "ch_5")))
    assert "Did you mean 'ch_4_raw'?" in str(err.value)  # a column nobody reads: still suggested
