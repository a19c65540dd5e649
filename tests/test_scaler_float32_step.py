"""A constant channel far from zero is scaled by one float32 step, not by 1.0 (session 36's
review): an unchanging meter at 1e9 that rounds to two neighbouring float32 values flickered by
64 raw units into the model, which drowned every other channel's reconstruction error."""
import numpy as np
import pytest

from stream_ae.errors import ArtifactError
from stream_ae.scaling import ChannelScaler


def meter_rows(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    meter = (1e9 + 32 + 1e-3 * rng.normal(size=n)).astype(np.float32)   # two float32 levels, 64 apart
    return np.stack([rng.normal(size=n), meter], 1).astype(np.float32)


def test_an_unchanging_meter_that_flickers_by_a_float32_step_is_scaled_by_that_step():
    rows = meter_rows()
    assert np.unique(rows[:, 1]).size == 2
    scaler = ChannelScaler().fit(rows)
    x = scaler.transform(rows)
    assert scaler.constant().tolist() == [False, True]
    assert scaler.scale[1] == 64.0
    assert np.abs(x[:, 1]).max() <= 1.0 and abs(x[:, 0].std() - 1) < 1e-3


def test_a_constant_channel_near_zero_keeps_scale_one():
    rows = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]], np.float32)
    assert ChannelScaler().fit(rows).scale[1] == 1.0


def test_the_rule_round_trips_and_an_artifact_from_before_it_scores_as_it_was_trained():
    scaler = ChannelScaler().fit(meter_rows())
    d = scaler.to_dict()
    assert d["constant_scale"] == "float32_step"
    assert ChannelScaler.from_dict(d).scale.tolist() == scaler.scale.tolist()
    old = {k: v for k, v in d.items() if k != "constant_scale"}   # written before session 36
    assert ChannelScaler.from_dict(old).scale[1] == 1.0


def test_an_unknown_rule_in_a_file_is_a_corrupt_artifact():
    d = ChannelScaler().fit(meter_rows()).to_dict()
    with pytest.raises(ArtifactError, match="constant_scale"):
        ChannelScaler.from_dict({**d, "constant_scale": "two"})
