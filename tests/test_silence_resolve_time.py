"""A silence resolve is stamped with the entity's last window, so a backlog of its readings that
arrives later opens the next alert after the resolve, never before it."""
from __future__ import annotations

import numpy as np

from stream_ae.alerts import AlertPolicy, AlertTracker

S = 10**9
CH = ["a", "b"]


def _window(tracker, ts_s, clock_s, flagged=True):
    return tracker.observe_many("pump-7", np.array([ts_s * S]), np.array([5.0]), np.array([1.0]),
                                np.array([flagged]), np.array([[1.0, 3.0]]), CH, "v1", clock=np.array([clock_s * S]))


def test_a_delayed_backlog_opens_its_alert_after_the_silence_resolve():
    """Before: resolved at last window + silence_s (1310 s), after the next alert opened at 1020 s."""
    tracker = AlertTracker(AlertPolicy(k=2, n=3, quiet_s=60, silence_s=300))
    events = [*_window(tracker, 1000, 1000), *_window(tracker, 1010, 1010)]   # a fault: the alert opens
    events.append(tracker.expire_silent("pump-7", 1400 * S))    # the gateway stalls; the partition moves on
    events += [*_window(tracker, 1020, 1400), *_window(tracker, 1030, 1410)]  # the backlog: the fault went on
    (opened, resolved, reopened) = events
    assert (opened.state, resolved.state, reopened.state) == ("open", "resolved", "open")
    assert resolved.at == 1010 * S                             # the last window the entity had shown
    assert resolved.at <= reopened.started_at                  # the entity's alerts do not overlap


def test_a_silence_seen_within_a_batch_is_stamped_the_same_way():
    tracker = AlertTracker(AlertPolicy(k=1, n=1, quiet_s=60, silence_s=120))
    ts = np.array([0, 10, 400]) * S
    clock = np.array([0, 10, 390]) * S   # others moved on 380 s before the entity's next window
    events = tracker.observe_many("e", ts, np.full(3, 5.0), np.ones(3), np.ones(3, bool), np.ones((3, 2)),
                                  CH, "v1", clock=clock)
    assert [(e.state, e.at // S) for e in events] == [("open", 0), ("resolved", 10), ("open", 400)]
