"""Alert lifecycle: opening on k of n, rate-limited updates, quiet resolve, ids, exact state."""

import json

import numpy as np
import pytest

from stream_ae.alerts import AlertEvent, AlertPolicy, AlertTracker, iso_utc
from stream_ae.errors import ArtifactError, ConfigError, DataError

S = 1_000_000_000
CH = ["temp", "flow", "pressure", "vib"]
ERR = np.array([0.1, 0.6, 0.2, 0.1])


def feed(tracker, flags, scores=None, step_s=10, entity="pump-1", t0=0, threshold=1.0):
    """Observe one window per flag, ``step_s`` apart; returns all events."""
    events = []
    for i, f in enumerate(flags):
        score = scores[i] if scores is not None else (1.5 if f else 0.5)
        events += tracker.observe(entity, (t0 + i * step_s) * S, score, threshold, bool(f), ERR, CH, "v1")
    return events


def random_stream(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    flags = rng.random(n) < 0.03
    for start in rng.choice(n - 60, size=8, replace=False):       # bursts that open alerts
        flags[start:start + rng.integers(5, 60)] = True
    ts = np.cumsum(rng.integers(1, 20, size=n)).astype(np.int64) * S
    scores = np.where(flags, rng.uniform(1.0, 4.0, n), rng.uniform(0.1, 0.9, n))
    return ts, scores, np.ones(n), flags, rng.random((n, len(CH))).astype(np.float32)


def test_opens_when_k_of_last_n_windows_are_flagged():
    tr = AlertTracker(AlertPolicy(k=3, n=5))
    assert feed(tr, [1, 0, 0, 0, 1, 0, 0, 1]) == []             # never 3 flagged among 5
    tr = AlertTracker(AlertPolicy(k=3, n=5))
    events = feed(tr, [0, 1, 0, 1, 0, 1, 1])
    assert [(e.state, e.at) for e in events] == [("open", 50 * S)]
    assert events[0].started_at == 10 * S                        # the first flagged window
    assert events[0].sequence == 0 and events[0].severity == "warning"


def test_updates_are_rate_limited_and_need_a_meaningful_change():
    policy = AlertPolicy(k=1, n=1, update_interval_s=30, quiet_s=120)
    steady = feed(AlertTracker(policy), [1] * 100, scores=[1.5] * 100, step_s=1)
    assert [e.state for e in steady] == ["open"]                 # nothing changed: no updates
    rising = feed(AlertTracker(policy), [1] * 100, scores=list(np.linspace(1.1, 1.9, 100)), step_s=1)
    updates = [e for e in rising if e.state == "update"]
    assert 1 <= len(updates) <= 3
    assert all(b.at - a.at >= 30 * S for a, b in zip(rising, rising[1:]))


def test_severity_bands_and_escalation_update():
    policy = AlertPolicy(k=1, n=1, update_interval_s=5, bands=(("warning", 1.0), ("critical", 2.0)))
    events = feed(AlertTracker(policy), [1, 1, 1], scores=[1.2, 1.25, 3.0], threshold=1.0)
    assert [(e.state, e.severity) for e in events] == [("open", "warning"), ("update", "critical")]
    assert policy.severity(0.5) == "warning"                     # below every band: the first one
    three = AlertPolicy(bands=[["minor", 1.0], ["major", 1.5], ["critical", 3.0]])
    assert [three.severity(r) for r in (1.2, 1.5, 2.9, 10)] == ["minor", "major", "major", "critical"]


def test_resolves_after_the_quiet_period_and_reopens_with_a_new_id():
    tr = AlertTracker(AlertPolicy(k=2, n=3, quiet_s=120))
    flags = [1, 1] + [0] * 11 + [1, 1]                           # windows every 10 s
    events = feed(tr, flags)
    assert [e.state for e in events] == ["open", "resolved", "open"]
    opened, resolved, reopened = events
    assert resolved.at == 130 * S                                # first window >= 120 s after the last flag
    assert resolved.alert_id == opened.alert_id and resolved.sequence == 1
    assert reopened.alert_id != opened.alert_id
    assert tr.open_alerts() == {"pump-1": reopened.alert_id}


def test_an_alert_resolves_once_its_entity_was_silent_while_others_went_on():
    tr = AlertTracker(AlertPolicy(k=1, n=1, quiet_s=60, silence_s=120))
    feed(tr, [1])  # a window at 0 s opens it; the entity then sends nothing
    assert tr.expire_silent("pump-1", 119 * S) is None
    (event,) = [tr.expire_silent("pump-1", 500 * S)]  # noticed late: stamped with the last window it sent
    assert event.state == "resolved" and event.at == 0 and event.sequence == 1
    assert tr.open_alerts() == {} and tr.expire_silent("pump-1", 900 * S) is None
    assert AlertTracker(AlertPolicy(quiet_s=60)).policy.silence == 300  # default: 5 x quiet_s


def test_silence_before_a_window_resolves_first_and_the_window_counts_anew():
    """The entity comes back after a silence that others' clock saw: the alert resolved during the
    silence (stamped with the entity's last window before it), then the window that brings it back
    starts the k-of-n count over."""
    policy = AlertPolicy(k=1, n=1, quiet_s=60, silence_s=120)
    ts = np.array([0, 10, 20, 300]) * S  # a gap of 280 s before the last window
    flags = np.array([True, True, False, True])
    scores, thr, err = np.full(4, 5.0), np.ones(4), np.ones((4, len(CH)))
    clock = np.array([0, 10, 20, 290]) * S  # others reached 290 s before the last window
    events = AlertTracker(policy).observe_many("e", ts, scores, thr, flags, err, CH, "v1", clock=clock)
    assert [(e.state, e.at) for e in events] == [("open", 0), ("resolved", 20 * S), ("open", 300 * S)]
    lagging = np.array([0, 10, 20, 130]) * S  # others only 110 s past its last window: no silence
    events = AlertTracker(policy).observe_many("e", ts, scores, thr, flags, err, CH, "v1", clock=lagging)
    assert [(e.state, e.at) for e in events] == [("open", 0), ("resolved", 300 * S), ("open", 300 * S)]


def test_ids_are_deterministic_and_event_ids_unique():
    runs = []
    for _ in range(2):
        tr = AlertTracker()
        runs.append(tr.observe_many("pump-1", *random_stream(), CH, "v1"))
    assert runs[0] == runs[1] and len(runs[0]) > 5
    ids = [e.event_id for e in runs[0]]
    assert len(set(ids)) == len(ids)
    other = AlertTracker().observe_many("pump-2", *random_stream(), CH, "v1")
    assert {e.alert_id for e in other}.isdisjoint({e.alert_id for e in runs[0]})


def test_observe_many_equals_a_loop_of_observe():
    ts, scores, thr, flags, err = random_stream(seed=1)
    many = AlertTracker().observe_many("e", ts, scores, thr, flags, err, CH, "v1")
    loop_tr = AlertTracker()
    loop = [ev for i in range(len(ts))
            for ev in loop_tr.observe("e", ts[i], scores[i], thr[i], flags[i], err[i], CH, "v1")]
    assert many == loop
    assert {e.state for e in many} == {"open", "update", "resolved"}


@pytest.mark.parametrize("seed", range(12))
def test_observe_many_in_random_chunks_equals_the_loop_for_any_policy(seed):
    """The vectorised path (k-of-n count, resolve search, update search, lazy top channels)
    gives the loop's events and the loop's saved state, whatever the chunking and policy."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 6))
    policy = AlertPolicy(k=int(rng.integers(1, n + 1)), n=n, update_interval_s=float(rng.choice([0, 5, 30])),
                         update_min_change=float(rng.choice([0.0, 0.2])), quiet_s=float(rng.choice([1, 15, 60])))
    size = 1500
    flags = rng.random(size) < rng.choice([0.05, 0.3, 0.6, 0.95])  # up to the bench's 60 % flagged
    ts = np.cumsum(rng.integers(0, 12, size=size)).astype(np.int64) * S  # equal times allowed
    scores = np.where(flags, rng.uniform(1.0, 5.0, size), rng.uniform(0.0, 0.9, size)).astype(np.float32)
    thr = rng.choice([1.0, 1.7, 0.0, -1.0], size=size, p=[0.7, 0.2, 0.05, 0.05])
    err = rng.random((size, len(CH))).astype(np.float32)
    loop_tr, many_tr = AlertTracker(policy), AlertTracker(policy)
    loop = [ev for i in range(size)
            for ev in loop_tr.observe("e", ts[i], scores[i], thr[i], flags[i], err[i], CH, "v1")]
    cuts = np.unique(np.concatenate([[0, size], rng.integers(0, size, size=int(rng.integers(0, 40)))]))
    many = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        many += many_tr.observe_many("e", ts[lo:hi], scores[lo:hi], thr[lo:hi], flags[lo:hi], err[lo:hi], CH, "v1")
    assert many == loop
    assert many_tr.state_dict() == loop_tr.state_dict()


@pytest.mark.parametrize("cut", [700, 1500, 2222])
def test_state_round_trip_mid_stream_continues_without_duplicates(cut):
    ts, scores, thr, flags, err = random_stream(seed=2)
    whole = AlertTracker().observe_many("e", ts, scores, thr, flags, err, CH, "v1")
    first = AlertTracker()
    head = first.observe_many("e", ts[:cut], scores[:cut], thr[:cut], flags[:cut], err[:cut], CH, "v1")
    second = AlertTracker()
    second.load_state_dict(json.loads(json.dumps(first.state_dict(), allow_nan=False)))
    tail = second.observe_many("e", ts[cut:], scores[cut:], thr[cut:], flags[cut:], err[cut:], CH, "v1")
    assert head + tail == whole


def test_restored_tracker_continues_the_open_alert():
    tr = AlertTracker(AlertPolicy(k=1, n=1, quiet_s=60))
    (opened,) = feed(tr, [1])
    restored = AlertTracker(AlertPolicy(k=1, n=1, quiet_s=60))
    restored.load_state_dict(json.loads(json.dumps(tr.state_dict())))
    (resolved,) = feed(restored, [0], t0=60)
    assert (resolved.alert_id, resolved.sequence) == (opened.alert_id, 1)
    with pytest.raises(ArtifactError, match="policy"):
        AlertTracker(AlertPolicy(k=2)).load_state_dict({**tr.state_dict(), "policy": {"k": "many"}})


def test_state_saved_under_another_policy_goes_on_under_the_new_one():
    """The [alerts] settings changed between a checkpoint and the restart: the open alert keeps
    its id and resolves under the new quiet period, its severity in the new bands."""
    old = AlertPolicy(k=1, n=1, quiet_s=60, bands=[("warning", 1.0), ("critical", 2.0)])
    tr = AlertTracker(old)
    (opened,) = tr.observe("e", 0, 5.0, 1.0, True, np.ones(len(CH)), CH, "v1")  # critical
    new = AlertPolicy(k=2, n=3, quiet_s=10, bands=[("minor", 1.0), ("critical", 3.0)])
    restored = AlertTracker(new)
    restored.load_state_dict(json.loads(json.dumps(tr.state_dict())))
    assert restored.open_alerts() == {"e": opened.alert_id}
    (resolved,) = restored.observe("e", 10 * 10**9, 0.1, 1.0, False, np.ones(len(CH)), CH, "v1")
    assert (resolved.alert_id, resolved.state, resolved.severity) == (opened.alert_id, "resolved", "critical")
    assert tr.observe("e", 10 * 10**9, 0.1, 1.0, False, np.ones(len(CH)), CH, "v1") == []  # old quiet: 60 s


def test_top_channels_are_ordered_shares_of_the_window_error():
    for row in np.random.default_rng(3).random((50, 4)):
        (e,) = AlertTracker(AlertPolicy(k=1, n=1, top_k=3)).observe("x", 0, 2.0, 1.0, True, row, CH, "v1")
        shares = [s for _, s in e.top_channels]
        assert len(shares) == 3 and shares == sorted(shares, reverse=True)
        assert sum(shares) <= 1.0 + 1e-12
        assert e.top_channels[0][0] == CH[int(np.argmax(row))]


def test_event_to_dict_is_json_with_iso_utc_times():
    (e,) = feed(AlertTracker(AlertPolicy(k=1, n=1)), [1], t0=1_700_000_000)
    d = json.loads(json.dumps(e.to_dict(), allow_nan=False))
    assert d["at"] == "2023-11-14T22:13:20Z" and d["state"] == "open"
    assert d["top_channels"][0] == {"channel": "flow", "share": pytest.approx(0.6)}
    assert iso_utc(1_500_000_001) == "1970-01-01T00:00:01.500000001Z"
    assert isinstance(e, AlertEvent)


def test_out_of_order_windows_are_refused():
    tr = AlertTracker()
    feed(tr, [0, 0], t0=100)
    with pytest.raises(DataError, match="event-time order"):
        tr.observe("pump-1", 5 * S, 0.1, 1.0, False, ERR, CH, "v1")
    with pytest.raises(DataError, match="event-time order"):
        AlertTracker().observe_many("e", np.array([2, 1]) * S, np.ones(2), np.ones(2),
                                    np.zeros(2, bool), np.ones((2, 4)), CH, "v1")


def test_policy_round_trip_and_validation():
    p = AlertPolicy(k=2, n=4, bands=(("low", 1.0), ("high", 3.0)))
    assert AlertPolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    for bad in [{"k": 6, "n": 5}, {"k": 0}, {"quiet_s": 0}, {"update_interval_s": -1},
                {"bands": [["a", 2.0], ["b", 1.0]]}, {"bands": []}, {"bands": [["a", 1.0], ["a", 2.0]]},
                {"top_k": -1}, {"n": 5.0}, {"window": 3}]:
        with pytest.raises(ConfigError):
            AlertPolicy.from_dict(bad)
