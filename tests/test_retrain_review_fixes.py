"""The retrain job after session 35's review:

- a sensor retired from the archive ends a run ``kept_champion`` with the reason (the champion
  cannot read the holdout), and the schedule counts it; before, every run failed scoring the
  champion, wrote no ``last.json``, and the hourly job trained a new challenger each hour;
- ``--progress`` is no part of a run's fingerprint (the same hour rerun by hand trained again);
- the challenger takes the champion's channel order (a first file without a channel reordered
  them, and an equal set of channels was refused as "cannot hot-swap");
- a champion whose version folder is gone fails the run (exit 1), checked before training,
  not as bad settings (exit 2);
- the daily interval counts from the last success's start, not its end;
- a run that loses the promotion to an overlapping run of the same data keeps that run's report;
- ``anomaly`` labels written as text: "no" is no anomaly.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from unittest import mock

import pandas as pd
import pyarrow.parquet as pq
import pytest

import stream_ae.retraining.job as job
from stream_ae.errors import ArtifactError, DataError
from stream_ae.registry import Registry
from stream_ae.retraining import is_due, run_retrain
from stream_ae.retraining.labels import load_labels
from test_retrain import DEPLOYMENT, POOR, make_settings, plant  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def without(src: str, dst, column: str) -> str:
    for path in sorted(Path(src).rglob("*.parquet")):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(path)
        pq.write_table(table.drop([column]), out)
    return str(dst)


def test_a_retired_sensor_keeps_the_champion_with_the_reason_and_the_schedule_counts_it(tmp_path, plant):  # noqa: F811
    first = run_retrain(make_settings(tmp_path, plant, *POOR), now=plant["now"] - pd.Timedelta(minutes=2))
    assert first.decision == "promoted"
    retired = dict(plant, history=without(plant["history"], tmp_path / "retired", "ch_2"))
    settings = make_settings(tmp_path, retired, *POOR)
    report = run_retrain(settings, now=plant["now"])
    assert report.decision == "kept_champion" and report.exit_code == 0
    assert "cannot hot-swap" in report.reasons[0] and "cannot be scored on the holdout" in report.reasons[0]
    assert Registry(tmp_path / "models").current(DEPLOYMENT) == first.challenger["version"]
    due, why = is_due(settings)
    assert not due, why


def test_progress_is_no_part_of_the_fingerprint(tmp_path, plant):  # noqa: F811
    settings = make_settings(tmp_path, plant, *POOR)
    first = run_retrain(settings, now=plant["now"])
    again = run_retrain(settings, now=plant["now"], progress=True)
    assert again.decision == "already_done" and again.fingerprint == first.fingerprint


def test_the_challenger_takes_the_champions_channel_order(tmp_path, plant):  # noqa: F811
    first = run_retrain(make_settings(tmp_path, plant, *POOR), now=plant["now"] - pd.Timedelta(minutes=2))
    champion = Registry(tmp_path / "models").current(DEPLOYMENT)
    reordered = tmp_path / "reordered"
    for path in sorted(Path(plant["history"]).rglob("*.parquet")):
        table = pq.read_table(path)
        names = [n for n in table.column_names if n not in ("ch_0",)] + ["ch_0"]   # ch_0 last in every file
        out = reordered / path.relative_to(plant["history"])
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.select(names), out)
    report = run_retrain(make_settings(tmp_path, dict(plant, history=str(reordered)), *POOR), now=plant["now"])
    challenger = json.loads((tmp_path / "models" / report.challenger["version"] / "manifest.json").read_text())
    champ = json.loads((tmp_path / "models" / champion / "manifest.json").read_text())
    assert challenger["channels"] == champ["channels"] == ["ch_0", "ch_1", "ch_2"]
    assert not any("cannot hot-swap" in r for r in report.reasons)
    assert first.decision == "promoted"


def test_a_champion_folder_gone_fails_before_training(tmp_path, plant):  # noqa: F811
    first = run_retrain(make_settings(tmp_path, plant, *POOR), now=plant["now"] - pd.Timedelta(minutes=2))
    shutil.rmtree(tmp_path / "models" / first.challenger["version"])
    with mock.patch.object(job, "_train_and_publish", side_effect=AssertionError("trained")):
        with pytest.raises(ArtifactError, match="the champion .* cannot be loaded"):
            run_retrain(make_settings(tmp_path, plant, *POOR), now=plant["now"])


def test_the_interval_counts_from_the_last_successful_start(tmp_path, plant):  # noqa: F811
    settings = make_settings(tmp_path, plant, "retrain.interval=1d")
    started, ran = pd.Timestamp("2026-03-01T03:17:00Z"), pd.Timestamp("2026-03-01T03:57:00Z")
    job.write_json(Registry(tmp_path / "models"), f"{job.STATE_DIR}/{DEPLOYMENT}/last.json",
                   {"ran_at": ran.isoformat(), "started_at": started.isoformat()})
    with mock.patch.object(job, "_wall", return_value=(started + pd.Timedelta(days=1)).to_pydatetime()):
        due, why = is_due(settings)
    assert due and "started 86400 s ago" in why


def test_a_run_that_loses_to_an_overlapping_run_of_the_same_data_keeps_its_report(tmp_path, plant):  # noqa: F811
    run_retrain(make_settings(tmp_path, plant, *POOR), now=plant["now"] - pd.Timedelta(minutes=2))
    settings = make_settings(tmp_path, plant, *POOR, "retrain.error_tolerance=100", "retrain.alert_rate_tolerance=100",
                             "retrain.fault_tolerance=1")
    real_promote, reports = Registry.promote, []
    gate = threading.Event()

    def slow_promote(self, *args, **kwargs):   # the first run waits at its promotion for the second
        if threading.current_thread().name == "first":
            gate.wait(120)
        return real_promote(self, *args, **kwargs)

    def first():
        reports.append(run_retrain(settings, now=plant["now"]))

    with mock.patch.object(Registry, "promote", slow_promote):
        t = threading.Thread(target=first, name="first")
        t.start()
        while not any((tmp_path / "models" / job.STATE_DIR / DEPLOYMENT / "runs").glob("*.json")) or \
                not all("challenger" in json.loads(p.read_text())
                        for p in (tmp_path / "models" / job.STATE_DIR / DEPLOYMENT / "runs").glob("*.json")):
            t.join(0.05)
        second = run_retrain(settings, now=plant["now"])   # reuses the challenger and promotes it first
        gate.set()
        t.join()
    assert second.decision == "promoted"
    assert reports[0].decision == "already_done" and "overlapping run" in reports[0].reasons[0]
    assert json.loads(open(second.report_path).read())["decision"] == "promoted"   # not overwritten


def test_text_anomaly_labels_read_as_words(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("entity,start,end,anomaly\nu1,2026-01-01T00:00:00Z,2026-01-01T01:00:00Z,no\n"
                    "u2,2026-01-01T00:00:00Z,2026-01-01T01:00:00Z,Yes\n")
    events = load_labels(str(path), 0, 2**62)
    assert [e.entity for e in events] == ["u2"]
    path.write_text("entity,start,end,anomaly\nu1,2026-01-01T00:00:00Z,2026-01-01T01:00:00Z,maybe\n")
    with pytest.raises(DataError, match="anomaly value 'maybe'"):
        load_labels(str(path), 0, 2**62)
