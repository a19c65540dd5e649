"""A restart or hot reload under other settings: restored state goes on instead of stopping the restore.

Before, a snapshot taken under another ``[alerts]`` policy, or a model with another hop, gap or
fill limit, raised on restore, and the consumer could not start until the state topic was deleted.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from stream_ae.alerts import AlertPolicy, AlertTracker
from stream_ae.data.windows import SeriesWindower, WindowSpec
from stream_ae.scoring import Scorer
from test_stream_detector import T, artifact, make_detector, plant, run, scorer  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_snapshot_from_other_settings_goes_on_under_the_new_model_and_policy(scorer):  # noqa: F811
    from stream_ae.stream.detector import Detector
    from stream_ae.thresholds import ThresholdSpec

    entity, ts, values = plant(n_rows=600, entities=("pump-b",), anomaly=("pump-b", 250, 300))
    first = make_detector(scorer)  # hop 1; k=2 of n=4, quiet 20 s
    events, _, _ = run(first, entity[:290], ts[:290], values[:290], chunk=50)
    assert events[0].state == "open" and "resolved" not in [e.state for e in events]
    snapshot = first.table.get("pump-b").state_dict()

    art = dataclasses.replace(scorer.artifact, window=WindowSpec(length=T, hop=4))  # the next model's hop
    policy = AlertPolicy(k=1, n=2, quiet_s=5.0, bands=[("high", 1.0), ("critical", 2.0)])
    second = Detector(Scorer(art, device="cpu"), ThresholdSpec.from_dict(art.threshold["spec"]),
                      art.threshold["state"], policy, art.window)
    second.restore("pump-b", snapshot)
    more, windows, _ = run(second, entity[290:], ts[290:], values[290:], chunk=50)
    assert windows == len(ts[290:]) // 4  # every 4th reading from the last window on
    resolved = [e for e in more if e.state == "resolved"]
    assert [e.alert_id for e in resolved] == [events[0].alert_id]  # the same alert, resolved once
    assert resolved[0].severity in ("high", "critical")


def test_hot_reload_to_another_hop_applies_it_to_every_entity(scorer):  # noqa: F811
    entity, ts, values = plant(n_rows=200, entities=("pump-a", "pump-c"), anomaly=None)
    detector = make_detector(scorer)
    run(detector, entity[:100], ts[:100], values[:100], chunk=50)
    art = dataclasses.replace(scorer.artifact, window=WindowSpec(length=T, hop=5))
    detector.swap_scorer(Scorer(art, device="cpu"))
    _, windows, _ = run(detector, entity[100:], ts[100:], values[100:], chunk=50)
    per_entity = len(ts[100:]) // 2  # time-interleaved, one reading each a step
    assert windows == 2 * (per_entity // 5)  # hop 5 from each entity's last window on
    assert {s.windower.spec.hop for s in detector.table.states()} == {5}


def test_saved_windows_of_another_length_start_over_and_the_open_alert_stays(caplog):
    from stream_ae.stream.entities import EntityState

    class Threshold:
        def state_dict(self):
            return {}

        def load_state_dict(self, d):
            pass

    old = EntityState("pump-b", SeriesWindower(WindowSpec(length=8), 2), Threshold(),
                      AlertTracker(AlertPolicy(k=1, n=1)))
    step = np.arange(1, 21, dtype=np.int64) * 10**9
    old.windower.push(step, np.ones((20, 2), np.float32))
    (opened,) = old.tracker.observe("pump-b", int(step[-1]), 5.0, 1.0, True, np.ones(2), ["a", "b"], "v1")
    new = EntityState("pump-b", SeriesWindower(WindowSpec(length=4), 2), Threshold(),
                      AlertTracker(AlertPolicy(k=1, n=1)))
    with caplog.at_level(logging.WARNING, logger="stream_ae.stream.entities"):
        new.load_state_dict(old.state_dict())
    assert "start over" in caplog.text
    assert new.tracker.open_alerts() == {"pump-b": opened.alert_id}
    wb = new.windower.push(step[-1] + step, np.ones((20, 2), np.float32))
    assert wb.end_index.tolist()[0] == 3  # the first window needs 4 new readings
