import json

import numpy as np
import pytest

from stream_ae.errors import ArtifactError, DataError
from stream_ae.scaling import ChannelScaler


def _rows(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)) * [1.0, 10.0, 0.1] + [0.0, 100.0, -5.0]).astype(np.float32)


def test_transform_standardises_the_training_split_only():
    train = _rows()
    later = train + 50.0  # a shifted test period must not move the statistics
    scaler = ChannelScaler().fit(train)
    z = scaler.transform(train)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)
    # the later period shows up as shifted, i.e. the scaler did not see it
    assert (scaler.transform(later).mean(axis=0) > 4.0).all()


def test_partial_fit_matches_fit_on_all_rows():
    rows = _rows(999).astype(np.float64)
    whole = ChannelScaler().fit(rows)
    parts = ChannelScaler()
    for chunk in np.array_split(rows, 7):
        parts.partial_fit(chunk)
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(parts.std, whole.std, rtol=1e-10)


def test_constant_channel_does_not_divide_by_zero():
    rows = _rows()
    rows[:, 1] = 42.0
    scaler = ChannelScaler().fit(rows)
    z = scaler.transform(rows)
    assert np.isfinite(z).all()
    assert (z[:, 1] == 0.0).all()
    # a later change of the constant channel is visible in raw units, not blown up
    step = scaler.transform(np.array([[0.0, 43.0, -5.0]], np.float32))
    assert step[0, 1] == pytest.approx(1.0)


def test_fit_ignores_nan():
    rows = _rows()
    clean = ChannelScaler().fit(rows)
    holes = rows.copy()
    holes[::10, 0] = np.nan
    scaler = ChannelScaler().fit(holes)
    assert np.isfinite(scaler.mean).all()
    np.testing.assert_allclose(scaler.mean[1:], clean.mean[1:])
    np.testing.assert_allclose(scaler.mean[0], np.nanmean(holes[:, 0].astype(np.float64)), rtol=1e-9)
    assert np.isnan(scaler.transform(holes)[0, 0])


def test_all_nan_channel_is_a_data_error():
    rows = _rows()
    rows[:, 2] = np.nan
    with pytest.raises(DataError, match=r"position \[2\]"):
        ChannelScaler().fit(rows).transform(rows)


def test_round_trip_is_json_safe_and_exact():
    scaler = ChannelScaler().fit(_rows())
    restored = ChannelScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    x = _rows(50, seed=1)
    np.testing.assert_array_equal(restored.transform(x), scaler.transform(x))


def test_wrong_channel_count_and_bad_state_are_refused():
    scaler = ChannelScaler().fit(_rows())
    with pytest.raises(DataError, match="3 channels"):
        scaler.transform(np.zeros((4, 2), np.float32))
    with pytest.raises(DataError, match="not fitted"):
        ChannelScaler().transform(np.zeros((4, 2), np.float32))
    with pytest.raises(ArtifactError, match="keys"):
        ChannelScaler.from_dict({"mean": [0.0]})
