"""The promotion rule asks whether the challenger still sees a fault on each channel.

Before, a challenger trained on a span with a few extreme readings on one channel (a sensor
error code) was promoted: its scaler divided that channel by a 4x larger spread, so its
errors (in its own units) came out smaller and it flagged nothing, the lowest alert rate of
all, while it had gone deaf on the channel. A healthy model could then not replace it, its
alert rate being above 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stream_ae.data.synthetic import generate_plant, write_history
from stream_ae.registry import Registry
from stream_ae.retraining import ModelMetrics, PromotionRule, decide, run_retrain
from test_retrain import DEPLOYMENT, GOOD, make_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plants(tmp_path_factory):
    """A clean 2-entity, 3-channel hour, and the same with 20 readings of ch_0 at +60 sd in the
    challenger's training span (the holdout, the last 15 minutes, is the same and clean)."""
    root = tmp_path_factory.mktemp("plants")
    df, _ = generate_plant(n_entities=2, n_channels=3, n_rows=3600, season_period=300, seed=3, anomalies=False)
    now = df.timestamp.max() + pd.Timedelta(seconds=1)
    spiky = df.copy()
    before = np.flatnonzero(spiky.timestamp < now - pd.Timedelta(minutes=20))
    spiky.loc[np.random.default_rng(0).choice(before, 20, replace=False), "ch_0"] = df.ch_0.mean() + 60 * df.ch_0.std()
    write_history(df, root / "clean")
    write_history(spiky, root / "spiky")
    return {"clean": {"history": str(root / "clean")}, "spiky": {"history": str(root / "spiky")}, "now": now}


def test_a_challenger_deaf_to_a_channel_is_not_promoted(tmp_path, plants):
    first = run_retrain(make_settings(tmp_path, plants["clean"], *GOOD), now=plants["now"])
    assert first.decision == "promoted"
    deaf = run_retrain(make_settings(tmp_path, plants["spiky"], *GOOD), now=plants["now"])
    ch, champ = deaf.challenger["metrics"], deaf.champion["metrics"]
    assert ch["median_error"] < champ["median_error"] and ch["alert_rate"] <= champ["alert_rate"]  # what fooled it
    assert champ["fault_detection"]["ch_0"] >= 0.9 and ch["fault_detection"]["ch_0"] <= 0.1
    assert deaf.decision == "kept_champion", deaf.reasons
    assert deaf.reasons[0].startswith("a 6-sigma level shift is flagged less often than by the champion on ch_0")
    assert Registry(tmp_path / "models").current(DEPLOYMENT) == first.challenger["version"]


def test_the_rule_compares_fault_shares_channel_by_channel():
    rule = PromotionRule(fault_tolerance=0.1)
    base = dict(windows=1000, median_error=0.2, p95_error=0.5, alert_rate=0.02)
    champion = ModelMetrics("v1", **base, fault_detection={"a": 1.0, "b": 0.5})
    close = ModelMetrics("v2", **base, fault_detection={"a": 0.95, "b": 0.45, "new": 0.0})
    assert decide(rule, close, champion).promote                  # within the tolerance; a new channel is not compared
    deaf = ModelMetrics("v3", **base, fault_detection={"a": 1.0, "b": 0.3})
    d = decide(rule, deaf, champion)
    assert not d.promote and "on b (0.3 < 0.5 - 0.1)" in d.reasons[0]
    unknown = ModelMetrics("v4", **base)                          # no shares (no calibrated threshold): not compared
    assert decide(rule, unknown, champion).promote
