"""What starts a retrain and what it reads: a drift marker written while a run trained, and the
labels file's entity ids and times."""

from __future__ import annotations

import datetime as dt

import pytest

from stream_ae.drift_marker import report_drift
from stream_ae.errors import DataError
from stream_ae.registry import Registry
from stream_ae.retraining import is_due
from stream_ae.retraining.job import load_labels, write_json
from stream_ae.stream.settings import load_settings


def test_a_drift_marker_written_while_a_run_trained_still_calls_for_a_retrain(tmp_path):
    """The run recorded when it finished; a marker from during its training was older than
    that, so it was ignored for good (the watch reports one event per excursion)."""
    settings = load_settings(env={}, overrides=[f"model.registry={tmp_path}", "retrain.deployment=prod",
                                                "retrain.interval=1d"])
    now = dt.datetime.now(dt.timezone.utc)
    started, marked, finished = now - dt.timedelta(hours=2), now - dt.timedelta(hours=1), now - dt.timedelta(minutes=5)
    last = {"ran_at": finished.isoformat(), "started_at": started.isoformat(), "run_id": "r", "decision": "promoted"}
    write_json(Registry(tmp_path), "retrain/prod/last.json", last)
    report_drift(tmp_path, "prod", {"direction": "up"}, at=marked)
    due, why = is_due(settings, if_drift=True)
    assert due and "after the last retrain started" in why
    report_drift(tmp_path, "prod", {"direction": "up"}, at=started - dt.timedelta(minutes=1))   # before it: handled
    assert not is_due(settings, if_drift=True)[0]


def test_label_entity_ids_stay_text_and_numeric_times_are_refused(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("entity,start,end\n0042,2026-01-01T01:00:00Z,2026-01-01T01:10:00Z\n")
    [event] = load_labels(str(labels), 0, 2**62)
    assert event.entity == "0042"   # read as the integer 42, it matched no window of entity "0042"
    labels.write_text("entity,start,end\npump-a,1767229200,1767229800\n")   # epoch seconds
    with pytest.raises(DataError, match="ISO 8601"):   # read as nanoseconds: January 1970, silently dropped
        load_labels(str(labels), 0, 2**62)
