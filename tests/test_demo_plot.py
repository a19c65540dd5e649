"""The demo's plot draws the channels an entity's injected anomalies touch, each anomaly on one at least."""

from __future__ import annotations

import numpy as np

from stream_ae.data.synthetic import InjectedAnomaly
from stream_ae.demo.plot import MAX_CHANNELS, plot_demo, shown_channels
from stream_ae.demo.summary import Detection

CHANNELS = ["ch_0", "ch_1", "ch_2", "ch_3", "ch_4"]


def anomaly(entity, kind, channels, start=0):
    return InjectedAnomaly(entity, kind, start, start + 10, tuple(channels))


def test_an_entity_shows_a_channel_of_each_of_its_anomalies_then_their_others_capped():
    injected = [anomaly("a", "stuck", ["ch_3"]), anomaly("b", "spike", ["ch_1"]),
                anomaly("a", "spike", ["ch_1", "ch_3"]), anomaly("a", "drift", ["ch_4", "ch_2"])]
    # one channel of each anomaly first (ch_3 already shows the second), then the others
    assert MAX_CHANNELS == 3 and shown_channels(CHANNELS, injected, "a") == [3, 4, 1]
    assert shown_channels(CHANNELS, injected, "b") == [1]
    assert shown_channels(CHANNELS, injected, "c") == [0]  # no anomaly: the first channel


def test_the_plot_is_written_for_entities_with_and_without_anomalies(tmp_path):
    rng = np.random.default_rng(0)
    n, step = 400, 10**10
    ts = np.arange(n, dtype=np.int64) * step
    frames = {e: dict(ts=ts, values=rng.normal(size=(n, len(CHANNELS))), channels=tuple(CHANNELS),
                      score_ts=ts[59:], score=rng.lognormal(size=n - 59), threshold=np.full(n - 59, 3.0))
              for e in ("a", "b")}
    injected = [anomaly("a", "stuck", ["ch_3"], start=int(ts[100]))]
    png = plot_demo(tmp_path / "demo.png", frames, injected, [Detection("a", int(ts[105]), int(ts[120]))], "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
