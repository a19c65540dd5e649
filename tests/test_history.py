"""History: reading a wide Parquet archive in any of its shapes, filters pushed down, clear errors."""

import datetime as dt
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_ae.data.history import History
from stream_ae.data.layout import Layout
from stream_ae.data.synthetic import generate_plant, write_history
from stream_ae.errors import ConfigError, DataError

CHANNELS = ("ch_0", "ch_1", "ch_2")


@pytest.fixture(scope="module")
def plant():
    df, _ = generate_plant(n_entities=2, n_channels=3, n_rows=3000, freq_s=60.0, seed=3, anomalies=False)
    return df  # 2 entities x 3000 minutes: 2026-01-01 .. 2026-01-03


def read_all(history, **kwargs):
    parts = list(history.iter_rows(**kwargs))
    ent = np.concatenate([p.entity for p in parts])
    ts = np.concatenate([p.ts for p in parts])
    values = np.concatenate([p.values for p in parts])
    order = np.lexsort((ent, ts))
    return ent[order], ts[order], values[order]


def expected(df):
    df = df.sort_values(["timestamp", "entity"])
    return df.entity.to_numpy(), df.timestamp.to_numpy("datetime64[ns]").view(np.int64), df[list(CHANNELS)].to_numpy(np.float32)


@pytest.mark.parametrize("shape", ["file", "directory", "hive date", "hive date+entity"])
def test_every_shape_reads_the_same_rows(tmp_path, plant, shape):
    if shape == "file":
        uri = write_history(plant, tmp_path / "h.parquet", partition_by=())
    elif shape == "directory":
        os.makedirs(tmp_path / "d")
        half = len(plant) // 2
        pq.write_table(pa.Table.from_pandas(plant.iloc[:half], preserve_index=False), tmp_path / "d" / "a.parquet")
        pq.write_table(pa.Table.from_pandas(plant.iloc[half:], preserve_index=False), tmp_path / "d" / "b.parquet")
        uri = str(tmp_path / "d")
    else:
        keys = ("date",) if shape == "hive date" else ("date", "entity")
        uri = write_history(plant, tmp_path / "hive", partition_by=keys)
    history = History.open(uri)
    assert history.channels == CHANNELS  # inferred: numeric, schema order, no date/entity keys
    assert history.count_rows() == len(plant)
    for got, want in zip(read_all(history), expected(plant)):
        np.testing.assert_array_equal(got, want)


def test_fragments_are_sorted_and_carry_partition_values(tmp_path, plant):
    history = History.open(write_history(plant, tmp_path / "hive", partition_by=("date", "entity")))
    frags = history.fragments()
    assert [f.path for f in frags] == sorted(f.path for f in frags)
    assert {(f.partition["date"], f.partition["entity"]) for f in frags} == {
        (d, e) for d in ("2026-01-01", "2026-01-02", "2026-01-03") for e in ("unit_0", "unit_1")
    }
    rows = list(history.iter_rows(frags[0]))
    assert {r.source for r in rows} == {frags[0].path}
    assert set(np.concatenate([r.entity for r in rows])) == {frags[0].partition["entity"]}


@pytest.mark.parametrize("start,end", [
    ("2026-01-01T12:00", "2026-01-02T06:30"),
    (dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc), pd.Timestamp("2026-01-02T07:30", tz="Europe/Paris")),
])
def test_time_range_and_entities_are_pushed_down(tmp_path, plant, start, end):
    uri = write_history(plant, tmp_path / "hive")
    history = History.open(uri, start=start, end=end, entities=["unit_1"])
    lo, hi = pd.Timestamp("2026-01-01T12:00", tz="UTC"), pd.Timestamp("2026-01-02T06:30", tz="UTC")
    want = plant[(plant.timestamp >= lo) & (plant.timestamp < hi) & (plant.entity == "unit_1")]
    ent, ts, _ = read_all(history)
    assert len(ts) == len(want) == history.count_rows() == 1110
    assert set(ent) == {"unit_1"} and ts.min() == lo.value and ts.max() < hi.value
    # whole earlier days are never opened; the day before (kept for zones east of UTC) is
    # opened for its footer only, whose timestamps all precede the start
    pruned = History.open(uri, start="2026-01-03T01:00")
    assert [f.partition["date"] for f in pruned.fragments()] == ["2026-01-03"]
    assert pruned.count_rows() == (plant.timestamp >= pd.Timestamp("2026-01-03T01:00", tz="UTC")).sum()


def test_batches_are_bounded(tmp_path, plant):
    history = History.open(write_history(plant, tmp_path / "f.parquet", partition_by=()))
    sizes = [len(r) for r in history.iter_rows(batch_rows=500)]
    assert max(sizes) <= 500 and sum(sizes) == len(plant)


def test_types_are_normalised(tmp_path):
    table = pa.table({
        "unit": pa.array([7, 7, 8]),
        "t": pa.array([0, 1000, 2000], pa.timestamp("ms")),  # naive -> UTC
        "a": pa.array([1, None, 3], pa.int32()),
        "b": pa.array([0.5, 1.5, None], pa.float64()),
    })
    pq.write_table(table, tmp_path / "x.parquet")
    rows = next(History.open(str(tmp_path / "x.parquet"), Layout(entity="unit", timestamp="t")).iter_rows())
    assert rows.entity.tolist() == ["7", "7", "8"]
    assert rows.ts.tolist() == [0, 1_000_000_000, 2_000_000_000]
    assert rows.values.dtype == np.float32 and np.isnan(rows.values[1, 0]) and np.isnan(rows.values[2, 1])
    # explicit channels choose the order; an integer entity filter works
    h = History.open(str(tmp_path / "x.parquet"), Layout(entity="unit", timestamp="t", channels=("b", "a")), entities=["8"])
    rows = next(h.iter_rows())
    assert h.channels == ("b", "a") and rows.values[0].tolist()[1] == 3.0 and rows.entity.tolist() == ["8"]


def test_file_uri_is_understood(tmp_path, plant):
    path = write_history(plant, tmp_path / "h.parquet", partition_by=())
    assert History.open("file://" + os.path.abspath(path)).count_rows() == len(plant)


# -- bad inputs: one clear message naming the place and the column --------------------


def write(tmp_path, name="bad.parquet", **columns):
    base = {"entity": ["a", "a"], "timestamp": pa.array([0, 1], pa.timestamp("s")), "x": [1.0, 2.0]}
    base.update(columns)
    path = tmp_path / name
    pq.write_table(pa.table({k: v for k, v in base.items() if v is not None}), path)
    return str(path)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"nope.*no such file"):
        History.open(str(tmp_path / "nope"))


def test_not_parquet(tmp_path):
    (tmp_path / "notes.parquet").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.parquet.*Parquet"):
        History.open(str(tmp_path / "notes.parquet"))


def test_empty_directory_and_empty_file(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataError, match=r"empty.*no Parquet files"):
        History.open(str(tmp_path / "empty"))
    pq.write_table(pa.table({"entity": pa.array([], pa.string()), "timestamp": pa.array([], pa.timestamp("s")),
                             "x": pa.array([], pa.float64())}), tmp_path / "zero.parquet")
    with pytest.raises(DataError, match=r"zero\.parquet.*no rows"):
        History.open(str(tmp_path / "zero.parquet"))


def test_misnamed_column_suggests_the_closest(tmp_path):
    path = write(tmp_path)
    with pytest.raises(DataError, match=r"bad\.parquet.*'tmestamp' not found.*Did you mean 'timestamp'"):
        History.open(path, Layout(timestamp="tmestamp"))
    with pytest.raises(DataError, match=r"bad\.parquet.*channel column 'y' not found"):
        History.open(path, Layout(channels=("x", "y")))


def test_non_numeric_channel(tmp_path):
    path = write(tmp_path, label=["on", "off"])
    with pytest.raises(DataError, match=r"bad\.parquet.*channel column 'label' has type string"):
        History.open(path, Layout(channels=("x", "label")))
    assert History.open(path).channels == ("x",)  # inference skips it


def test_integer_epoch_is_not_guessed(tmp_path):
    path = write(tmp_path, timestamp=[1_700_000_000, 1_700_000_001])
    with pytest.raises(DataError, match=r"bad\.parquet.*'timestamp'.*integer epoch.*timestamp_unit"):
        History.open(path)
    rows = next(History.open(path, Layout(timestamp_unit="s"), start="2023-11-14T22:13:21").iter_rows())
    assert rows.ts.tolist() == [1_700_000_001_000_000_000]


def test_string_timestamp(tmp_path):
    path = write(tmp_path, timestamp=["2026-01-01", "2026-01-02"])
    with pytest.raises(DataError, match=r"bad\.parquet.*timestamp column 'timestamp' has type string"):
        History.open(path)


def test_all_nan_channel_is_named_with_its_file(tmp_path):
    # null in every row: the footer's statistics say so, and the open stops
    path = write(tmp_path, dead=pa.array([None, None], pa.float64()))
    with pytest.raises(DataError, match=r"bad\.parquet.*'dead' has no value"):
        History.open(path)
    # NaN (not null) has no count in the statistics: the whole read names it at its end
    path = write(tmp_path, "nan.parquet", dead=pa.array(np.array([np.nan, np.nan])))
    with pytest.raises(DataError, match=r"nan\.parquet.*'dead' is entirely NaN"):
        list(History.open(path).iter_rows())


def test_one_file_of_a_directory_lacks_a_column(tmp_path):
    """A sensor added (or retired) between files: the file without its column reads it as null."""
    os.makedirs(tmp_path / "d")
    write(tmp_path / "d", "a.parquet", y=[1.0, 2.0])
    write(tmp_path / "d", "b.parquet", timestamp=pa.array([2, 3], pa.timestamp("s")))
    history = History.open(str(tmp_path / "d"))
    assert history.channels == ("x", "y")
    _, _, values = read_all(history)
    np.testing.assert_array_equal(values, [[1, 1], [2, 2], [1, np.nan], [2, np.nan]])


def test_bad_time_range(tmp_path):
    path = write(tmp_path)
    with pytest.raises(ConfigError, match="not a time"):
        History.open(path, start="yesterday-ish")
    with pytest.raises(ConfigError, match="not before"):
        History.open(path, start="2026-01-02", end="2026-01-01")
