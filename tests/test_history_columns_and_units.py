"""A pandas index written into the history is not a sensor channel, and integer times read in
too large a unit stop with the flag to set.

Before: ``df.to_parquet(path)`` of a filtered frame keeps its row numbers as
``__index_level_0__``, and ``stream-ae train`` with default channels learned it as a fifth
channel (a row counter), with no warning; a model that then met files written with
``index=False`` stopped with a missing-channel error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from stream_ae.data.history import History
from stream_ae.data.layout import Layout


def frame(n=200):
    rng = np.random.default_rng(0)
    ts = pd.date_range("2026-01-01", periods=n, freq="10s", tz="UTC")
    return pd.DataFrame({"entity": "u1", "timestamp": ts, "ch_0": rng.normal(size=n), "ch_1": rng.normal(size=n)})


def test_an_unnamed_index_from_a_filter_is_not_a_channel(tmp_path):
    df = frame()
    df[df.ch_0 > -1].to_parquet(tmp_path / "a.parquet")                 # pandas' default keeps the index
    assert "__index_level_0__" in pq.read_schema(tmp_path / "a.parquet").names
    assert History.open(str(tmp_path), Layout()).channels == ("ch_0", "ch_1")


def test_a_named_index_is_not_a_channel_but_a_named_channel_still_is(tmp_path):
    df = frame()
    df.index = pd.Index(np.arange(len(df)) * 7, name="row")
    df.to_parquet(tmp_path / "a.parquet")
    assert History.open(str(tmp_path), Layout()).channels == ("ch_0", "ch_1")
    df.reset_index().to_parquet(tmp_path / "a.parquet", index=False)      # now an ordinary column
    assert History.open(str(tmp_path), Layout()).channels == ("row", "ch_0", "ch_1")


def test_integer_times_read_in_too_large_a_unit_stop_with_the_flag_to_set(tmp_path):
    """Epoch milliseconds read as seconds used to overflow int64 silently: a span in 1853."""
    import pytest

    from stream_ae.errors import DataError

    df = frame()
    df["timestamp"] = (df["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)   # epoch ms
    df.to_parquet(tmp_path / "a.parquet", index=False)
    rows = list(History.open(str(tmp_path), Layout(timestamp_unit="ms")).iter_rows())
    assert rows[0].ts[0] == frame()["timestamp"].iloc[0].value
    with pytest.raises(DataError, match="past the year 2262: the times are in a smaller unit than 's'; set --time"):
        list(History.open(str(tmp_path), Layout(timestamp_unit="s")).iter_rows())


def test_training_on_a_long_tag_value_export_stops_and_says_to_pivot(tmp_path, capsys):
    """Before: 'value' became the only channel and 3 rows in 4 were dropped as duplicates, exit 0."""
    from stream_ae.cli import main

    wide = frame(n=3000)
    wide.melt(id_vars=["entity", "timestamp"], var_name="tag", value_name="value") \
        .sort_values(["entity", "timestamp", "tag"]).to_parquet(tmp_path / "long.parquet", index=False)
    code = main(["train", "--history", str(tmp_path / "long.parquet"), "--model", "conv", "--window", "16",
                 "--epochs", "1", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert code != 0 and "3000 of the 6000 rows repeat an entity's timestamp" in err and "pivot_table" in err
    assert not (tmp_path / "models").exists()


def test_training_shows_a_bar_over_each_read_of_the_history(tmp_path, monkeypatch):
    """Before: nothing was shown until the epochs began (about 2.5 min per 100 M rows here)."""
    import stream_ae.training.sampling as sampling
    from stream_ae.data.windows import WindowSpec

    bars = []

    class Bar:
        def __init__(self, enabled, total=None, desc="", **kwargs):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            pass

    monkeypatch.setattr(sampling, "progress_bar", Bar)
    frame(n=1200).to_parquet(tmp_path / "a.parquet", index=False)
    history = History.open(str(tmp_path), Layout())
    sampling.sample_windows(history, history.layout, WindowSpec(length=16), history.channels, 500, 0, progress=True)
    assert [(b.desc, b.total, b.n) for b in bars] == [("reading history 1/2", 1200, 1200),
                                                      ("reading history 2/2", 1200, 1200)]


def test_a_channel_flattened_by_float32_is_warned_about_once(tmp_path, monkeypatch, caplog):
    """Before: '1e9 + 20 sin t' (a meter) became one float32 value, scaled as a constant, no warning."""
    import logging

    import stream_ae.data.footers as footers

    monkeypatch.setattr(footers, "_FLOAT32_CHECKED", set())
    df = frame(n=600)
    df["meter"] = 1e9 + 20 * np.sin(np.arange(len(df)) / 10)
    df.to_parquet(tmp_path / "a.parquet", index=False)
    with caplog.at_level(logging.WARNING, logger="stream_ae.data.footers"):
        rows = list(History.open(str(tmp_path), Layout()).iter_rows(batch_rows=100))
        list(History.open(str(tmp_path), Layout()).iter_rows(batch_rows=100))
    assert len(np.unique(np.concatenate([r.values[:, 2] for r in rows]))) <= 3   # what the cast leaves
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "channel 'meter' varies by" in warned[0] and "Subtract an offset" in warned[0]
