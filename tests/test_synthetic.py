"""Synthetic plant: deterministic, anomalies exactly where reported, clean training rows respected."""

import numpy as np
import pandas as pd
import pytest

from stream_ae.data.history import History
from stream_ae.data.synthetic import ANOMALY_KINDS, generate_plant, write_synthetic_archive

CH = [f"ch_{i}" for i in range(4)]


@pytest.fixture(scope="module")
def plant():
    kwargs = dict(n_entities=3, n_channels=4, n_rows=12_000, clean_rows=3_000, seed=5, anomaly_rate=2e-3)
    df, anomalies = generate_plant(**kwargs)
    clean, none = generate_plant(**{**kwargs, "anomalies": False})
    return df, anomalies, clean, none


def test_same_seed_same_plant_other_seed_other_plant():
    a, la = generate_plant(n_entities=2, n_rows=2_000, seed=1)
    b, lb = generate_plant(n_entities=2, n_rows=2_000, seed=1)
    c, _ = generate_plant(n_entities=2, n_rows=2_000, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert la == lb
    assert not np.allclose(a.ch_0, c.ch_0)


def test_layout_and_time_axis(plant):
    df, *_ = plant
    assert list(df.columns) == ["entity", "timestamp", *CH]
    assert str(df.timestamp.dt.tz) == "UTC" and df.timestamp.iloc[0] == pd.Timestamp("2026-01-01", tz="UTC")
    per_entity = df.groupby("entity").timestamp
    assert (per_entity.count() == 12_000).all()
    assert (per_entity.diff().dropna() == pd.Timedelta(seconds=1)).all()


def test_anomalies_change_exactly_the_reported_rows_and_channels(plant):
    df, anomalies, clean, none = plant
    assert none == [] and {a.kind for a in anomalies} == set(ANOMALY_KINDS)
    for entity in df.entity.unique():
        got, ref = df[df.entity == entity], clean[clean.entity == entity]
        ts = got.timestamp.to_numpy("datetime64[ns]").view(np.int64)
        changed = got[CH].to_numpy() != ref[CH].to_numpy()  # (N, C)
        reported = np.zeros_like(changed)
        for a in (a for a in anomalies if a.entity == entity):
            rows = (ts >= a.start_ts) & (ts <= a.end_ts)
            reported[np.ix_(rows, [CH.index(c) for c in a.channels])] = True
        np.testing.assert_array_equal(changed, reported, err_msg=entity)


def test_clean_rows_hold_no_anomaly(plant):
    df, anomalies, clean, _ = plant
    first_dirty = pd.Timestamp("2026-01-01", tz="UTC").value + 3_000 * 10**9
    assert anomalies and min(a.start_ts for a in anomalies) >= first_dirty
    head = df.timestamp < pd.Timestamp(first_dirty, tz="UTC")
    pd.testing.assert_frame_equal(df[head], clean[head])


def test_channels_are_correlated_and_anomalies_stand_out(plant):
    df, anomalies, _, _ = plant
    unit = df[df.entity == "unit_0"][CH].to_numpy()
    corr = np.corrcoef(unit.T)
    assert np.abs(corr[np.triu_indices(4, 1)]).max() > 0.5  # channels share drivers
    spikes = [a for a in anomalies if a.kind == "spike"]
    a = spikes[0]
    rows = df[(df.entity == a.entity)]
    at = rows[rows.timestamp == pd.Timestamp(a.start_ts, tz="UTC")][list(a.channels)].to_numpy()
    z = np.abs(at - rows[list(a.channels)].median().to_numpy()) / rows[list(a.channels)].std().to_numpy()
    assert z.min() > 3


def test_archive_is_written_in_blocks_and_reads_back(tmp_path):
    found = write_synthetic_archive(tmp_path / "arch", 90_000, n_entities=3, n_channels=2, seed=4,
                                    rows_per_file=30_000, freq_s=5.0, anomaly_rate=1e-3)
    again = write_synthetic_archive(tmp_path / "again", 90_000, n_entities=3, n_channels=2, seed=4,
                                    rows_per_file=30_000, freq_s=5.0, anomaly_rate=1e-3)
    assert found == again and found
    history = History.open(str(tmp_path / "arch"))
    assert history.channels == ("ch_0", "ch_1") and history.count_rows() == 90_000
    frags = history.fragments()
    assert {f.partition["date"] for f in frags} == {"2026-01-01", "2026-01-02"}  # 30 000 steps of 5 s
    assert len(frags) == 4  # 3 blocks, the second spans midnight
    rows = list(history.iter_rows())
    ts = np.concatenate([r.ts for r in rows])
    assert (np.diff(ts) >= 0).all() and ts[0] == pd.Timestamp("2026-01-01", tz="UTC").value
    assert all(ts[0] <= a.start_ts <= a.end_ts <= ts[-1] for a in found)
