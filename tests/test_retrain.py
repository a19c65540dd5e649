"""The retraining job: champion / challenger on a held-out span, reports, conflicts, retries, schedule."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest

from stream_ae.data.synthetic import generate_plant, write_history
from stream_ae.errors import ConfigError, DataError
from stream_ae.registry import Registry
from stream_ae.retraining import ModelMetrics, PromotionRule, decide, is_due, run_retrain
from stream_ae.stream.settings import load_settings

DEPLOYMENT = "prod"
# Trained for 8 epochs on up to 3000 windows: a good model. One epoch on 500 windows: a poor one.
GOOD = ["retrain.epochs=8", "retrain.max_windows=3000"]
POOR = ["retrain.epochs=1", "retrain.max_windows=500"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    """One hour of a 2-entity, 3-channel plant at 1 Hz, with a few injected anomalies."""
    root = tmp_path_factory.mktemp("plant")
    df, anomalies = generate_plant(n_entities=2, n_channels=3, n_rows=3600, season_period=300, seed=3)
    write_history(df, root / "history")
    end = df.timestamp.max() + pd.Timedelta(seconds=1)
    return {"history": str(root / "history"), "now": end, "anomalies": anomalies}


def make_settings(tmp_path, plant, *extra):
    return load_settings(env={}, overrides=[
        f"model.registry={tmp_path / 'models'}", f"retrain.deployment={DEPLOYMENT}",
        f"retrain.history={plant['history']}", f"retrain.report_dir={tmp_path / 'reports'}",
        "retrain.train_span=40m", "retrain.holdout_span=15m", "retrain.align=1s", "retrain.window=16",
        "retrain.device=cpu", *extra])


def report_file(report) -> dict:
    with open(report.report_path, encoding="utf-8") as f:
        return json.load(f)


# ---- settings and the rule ----------------------------------------------------------------------

def test_retrain_settings_are_validated():
    s = load_settings("deploy/stream-ae.example.toml", env={})
    assert (s.retrain.train_span, s.retrain.holdout_span, s.retrain.history) == ("30d", "3d", None)
    with pytest.raises(ConfigError, match=r"retrain.holdout_span.*not a duration"):
        load_settings(env={}, overrides=["retrain.holdout_span=3 days"])
    with pytest.raises(ConfigError, match=r"did you mean 'retrain.train_span'"):
        load_settings(env={}, overrides=["retrain.trainspan=3d"])
    with pytest.raises(ConfigError, match=r"retrain.error_tolerance"):
        load_settings(env={}, overrides=["retrain.error_tolerance=-0.1"])


def test_rule_refuses_a_challenger_worse_on_any_count():
    rule = PromotionRule(error_tolerance=0.05, alert_rate_tolerance=0.1, alert_rate_slack=0.0, recall_tolerance=0.0)
    champion = ModelMetrics("v1", 1000, 0.2, 0.5, 0.02, events=4, detected=3, recall=0.75)
    assert decide(rule, ModelMetrics("v2", 1000, 0.19, 0.5, 0.02, 4, 3, 0.75), champion).promote
    noisy = decide(rule, ModelMetrics("v2", 1000, 0.19, 0.5, 0.05, 4, 3, 0.75), champion)
    assert not noisy.promote and noisy.reasons[0].startswith("alert rate 0.05 >")
    blind = decide(rule, ModelMetrics("v2", 1000, 0.19, 0.5, 0.02, 4, 2, 0.5), champion)
    assert not blind.promote and "recall 2/4 = 0.5 < champion 0.75" in blind.reasons[0]
    assert decide(rule, ModelMetrics("v2", 1000, 0.3, 0.9, 0.5), None).promote   # no champion: first valid model


# ---- the job ------------------------------------------------------------------------------------

def test_promotes_a_better_challenger_and_refuses_a_worse_one_with_reports(tmp_path, plant):
    registry = Registry(tmp_path / "models")
    now = plant["now"]
    first = run_retrain(make_settings(tmp_path, plant, *POOR), now=now - pd.Timedelta(minutes=2))
    assert first.decision == "promoted" and first.exit_code == 0
    poor = first.challenger["version"]
    assert registry.current(DEPLOYMENT) == poor

    better = run_retrain(make_settings(tmp_path, plant, *GOOD), now=now)
    good = better.challenger["version"]
    assert better.decision == "promoted", better.reasons
    assert registry.current(DEPLOYMENT) == good
    assert better.challenger["metrics"]["median_error"] < better.champion["metrics"]["median_error"]
    saved = report_file(better)
    assert saved["decision"] == "promoted" and saved["champion"]["version"] == poor
    assert saved["rule"]["error_tolerance"] == 0.05 and saved["reasons"][0].startswith("median normal-data error")
    assert open(better.plot_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    worse = run_retrain(make_settings(tmp_path, plant, *POOR), now=now - pd.Timedelta(minutes=1))
    assert worse.decision == "kept_champion" and worse.exit_code == 0
    assert registry.current(DEPLOYMENT) == good                   # the champion stays
    assert any(r.startswith("median normal-data error") and " > champion" in r for r in worse.reasons)
    saved = report_file(worse)
    assert saved["decision"] == "kept_champion" and saved["challenger"]["metrics"]["median_error"] > 0
    assert [h["version"] for h in registry.history(DEPLOYMENT)] == [poor, good]


def test_retry_reuses_the_challenger_and_never_promotes_twice(tmp_path, plant):
    registry = Registry(tmp_path / "models")
    bad_labels = tmp_path / "labels.csv"
    bad_labels.write_text("entity,begin\nunit_0,2026-01-01T00:50:00Z\n")
    with pytest.raises(DataError, match="labels need columns entity, start, end"):
        run_retrain(make_settings(tmp_path, plant, *GOOD, f"retrain.labels={bad_labels}"), now=plant["now"])
    assert len(registry.versions()) == 1 and registry.current(DEPLOYMENT) is None   # trained, failed, not promoted
    failed = json.loads(next((tmp_path / "reports").glob("*.json")).read_text())
    assert failed["decision"] == "failed" and "labels need columns" in failed["error"]

    labels = tmp_path / "labels.parquet"          # the injected anomalies as labelled events
    pd.DataFrame([{"entity": a.entity, "start": pd.Timestamp(a.start_ts, tz="UTC"),
                   "end": pd.Timestamp(a.end_ts, tz="UTC")} for a in plant["anomalies"]]).to_parquet(labels)
    settings = make_settings(tmp_path, plant, *GOOD, f"retrain.labels={labels}")
    retried = run_retrain(settings, now=plant["now"])
    assert retried.challenger_reused and retried.decision == "promoted"
    assert len(registry.versions()) == 1                          # not trained again
    in_holdout = [a for a in plant["anomalies"] if a.end_ts >= pd.Timestamp(plant["now"]).value - 15 * 60 * 10**9]
    assert retried.challenger["metrics"]["events"] == len(in_holdout)

    again = run_retrain(settings, now=plant["now"] + pd.Timedelta(milliseconds=300))   # same aligned slot
    assert again.decision == "already_done" and again.exit_code == 0
    assert len(registry.versions()) == 1 and len(registry.history(DEPLOYMENT)) == 1


def test_two_overlapping_runs_cannot_both_promote(tmp_path, plant, monkeypatch, capsys):
    import jobs.retrain
    import stream_ae.retraining.job as job

    registry = Registry(tmp_path / "models")
    run_retrain(make_settings(tmp_path, plant, *POOR), now=plant["now"] - pd.Timedelta(minutes=3))
    champion = registry.current(DEPLOYMENT)
    both_decided = threading.Barrier(2, timeout=60)

    def decide_together(*args):          # both runs read the champion, then decide at the same time
        both_decided.wait()
        return decide(*args)

    monkeypatch.setattr(job, "decide", decide_together)
    # What is tested is the race, not the models. Two trainings in one process share torch's global RNG,
    # so neither is reproducible here (CI once saw an alert rate of 0.145 against a limit of 0.131):
    # the rule is loosened so that both challengers qualify.
    either_qualifies = ("retrain.alert_rate_tolerance=100", "retrain.error_tolerance=100")
    codes = {}

    def cli(name, minutes):
        codes[name] = jobs.retrain.main([
            "--now", str(plant["now"] - pd.Timedelta(minutes=minutes)),
            *[a for o in (f"model.registry={tmp_path / 'models'}", f"retrain.deployment={DEPLOYMENT}",
                          f"retrain.history={plant['history']}", f"retrain.report_dir={tmp_path / 'reports'}",
                          "retrain.train_span=40m", "retrain.holdout_span=15m", "retrain.align=1s",
                          "retrain.window=16", "retrain.device=cpu", *GOOD, *either_qualifies)
                    for a in ("--set", o)]])

    threads = [threading.Thread(target=cli, args=(n, m)) for n, m in (("a", 0), ("b", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(codes.values()) == [0, 3], codes
    err = capsys.readouterr().err
    assert "conflict:" in err and "another promotion happened meanwhile" in err
    history = registry.history(DEPLOYMENT)
    assert len(history) == 2 and history[-1]["previous"] == champion       # exactly one promotion won
    decisions = sorted(json.loads(p.read_text())["decision"] for p in (tmp_path / "reports").glob("*.json"))
    assert decisions == ["conflict", "promoted", "promoted"]


def test_bad_data_and_bad_settings_exit_non_zero(tmp_path, plant, capsys):
    import jobs.retrain

    common = ["--set", f"model.registry={tmp_path / 'models'}", "--set", f"retrain.deployment={DEPLOYMENT}",
              "--set", f"retrain.report_dir={tmp_path / 'reports'}", "--set", "retrain.device=cpu"]
    assert jobs.retrain.main([*common, "--set", f"retrain.history={tmp_path / 'nothing'}"]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    # a holdout after the end of the history: nothing to train on
    assert jobs.retrain.main([*common, "--set", f"retrain.history={plant['history']}", "--now", "2027-01-01"]) == 1
    assert "has no rows between 2026-11-29T00:00:00+00:00 and" in capsys.readouterr().err
    assert jobs.retrain.main([*common, "--set", "retrain.model=gru"]) == 2
    assert "unknown model 'gru'" in capsys.readouterr().err
    assert Registry(tmp_path / "models").current(DEPLOYMENT) is None


def test_schedule_runs_when_due_or_after_drift(tmp_path, plant):
    from stream_ae.drift import DriftEvent
    from stream_ae.drift_marker import report_drift

    settings = make_settings(tmp_path, plant, *POOR, "retrain.interval=1d")
    assert is_due(settings) == (True, "no successful retrain recorded yet")
    assert run_retrain(settings, now=plant["now"], schedule=True).decision == "promoted"
    skipped = run_retrain(settings, now=plant["now"] + pd.Timedelta(minutes=5), schedule=True)
    assert skipped.decision == "not_due" and skipped.exit_code == 0 and "retrain.interval=1d" in skipped.reasons[0]
    report_drift(tmp_path / "models", DEPLOYMENT, DriftEvent("unit_1", 500, None, -3.0, -1.0, "up"))
    assert not is_due(settings)[0]                              # drift is ignored unless asked for
    due, why = is_due(settings, if_drift=True)
    assert due and why.startswith("drift reported at")
    early = run_retrain(settings, now=plant["now"] - pd.Timedelta(minutes=1), if_drift=True)
    assert early.decision in ("promoted", "kept_champion")
    assert not is_due(settings, if_drift=True)[0]               # the marker is older than this retrain now
    assert is_due(make_settings(tmp_path, plant, "retrain.interval=0s"))[0]


def test_the_challenger_is_trained_with_the_settings_detrend_and_score_steps(tmp_path, plant):
    from stream_ae.artifact import load_artifact

    report = run_retrain(make_settings(tmp_path, plant, *POOR, "retrain.detrend=ch_2,ch_0",
                                       "retrain.score_steps=4"), now=plant["now"])
    assert report.decision == "promoted", report.reasons
    model = load_artifact(Registry(tmp_path / "models").artifact_path(report.challenger["version"])).model
    assert model.detrend == (2, 0) and model.score_steps == 4
    assert report_file(report)["preset"]["detrend"] == ["ch_2", "ch_0"]


def test_a_challenger_the_consumers_cannot_hot_swap_is_not_promoted(tmp_path, plant):
    """A better challenger of another window length (or with a new sensor's channel) would be
    refused by every running consumer and loaded by every restarted one: one group, two models."""
    registry = Registry(tmp_path / "models")
    first = run_retrain(make_settings(tmp_path, plant, *POOR), now=plant["now"] - pd.Timedelta(minutes=2))
    longer = run_retrain(make_settings(tmp_path, plant, *GOOD, "retrain.window=24"), now=plant["now"])
    assert longer.decision == "kept_champion" and longer.exit_code == 0
    assert longer.reasons[0].startswith("the challenger has channels") and "windows of 24" in longer.reasons[0]
    assert registry.current(DEPLOYMENT) == first.challenger["version"]
