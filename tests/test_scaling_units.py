"""A channel is constant by its own size, not by an absolute floor in someone else's units.

The scaler took any channel with a standard deviation under 1e-6 for constant and scaled it by
1.0: a strain gauge in m/m (5e-7 around 1e-5) became about 0 for the model, a 20-sigma fault on
it scaled to 1e-5, and training warned that "a few extreme readings" had made its spread.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream_ae.data.layout import Layout
from stream_ae.data.synthetic import generate_plant, write_history
from stream_ae.data.windows import WindowSpec
from stream_ae.scaling import ChannelScaler
from stream_ae.thresholds import ThresholdSpec
from stream_ae.training import train
from test_training import TINY, _cfg


def rows(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(20.0, 2.0, n), rng.normal(1e-5, 5e-7, n)], 1).astype(np.float32)


def test_a_channel_in_small_units_is_scaled_by_its_own_spread():
    x = rows()
    scaler = ChannelScaler().fit(x)
    assert not scaler.constant().any()
    assert scaler.scale[1] == pytest.approx(5e-7, rel=0.05)
    fault = x[:100].copy()
    fault[:, 1] += 20 * 5e-7
    shift = scaler.transform(fault)[:, 1] - scaler.transform(x[:100])[:, 1]
    assert shift == pytest.approx(np.full(100, 20.0), rel=0.05)


@pytest.mark.parametrize("level", [1e-5, 1.0, 1000.0, 101325.0])
def test_a_reading_that_flickers_by_one_float32_step_is_constant(level):
    one_up = np.nextafter(np.float32(level), np.float32(np.inf))
    x = np.where(np.arange(1000) % 3 == 0, one_up, np.float32(level)).astype(np.float32)[:, None]
    scaler = ChannelScaler().fit(x)
    assert scaler.constant().tolist() == [True] and scaler.scale.tolist() == [1.0]


def test_an_artifact_written_before_the_relative_floor_scales_as_it_was_trained():
    state = ChannelScaler().fit(rows()).to_dict()
    assert state["min_rel_std"] > 0
    old = {k: v for k, v in state.items() if k != "min_rel_std"}
    old["min_std"] = 1e-6   # the absolute floor those artifacts carry
    restored = ChannelScaler.from_dict(old)
    assert restored.scale[1] == 1.0 and restored.min_rel_std == 0.0   # as before: no silent change of scores
    assert ChannelScaler.from_dict(state).scale[1] == pytest.approx(5e-7, rel=0.05)


def test_training_on_a_small_unit_channel_neither_flattens_it_nor_blames_extreme_readings(tmp_path):
    df, _ = generate_plant(n_entities=1, n_channels=3, n_rows=3000, anomalies=False, seed=5)
    df["ch_2"] = 1e-5 + (df["ch_2"] - df["ch_2"].mean()) / df["ch_2"].std() * 5e-7   # strain, m/m
    art = train(write_history(df, tmp_path / "plant"), Layout(), WindowSpec(length=16), TINY, _cfg(epochs=1),
                ThresholdSpec())
    assert art.training["warnings"] == []
    assert art.scaler.scale[2] == pytest.approx(5e-7, rel=0.1)
