"""An alert opens with the highest severity among the flagged windows that opened it: the
window that completes k of n may be a mild one after a severe one."""

from __future__ import annotations

import numpy as np
import pytest

from stream_ae.alerts import AlertPolicy, AlertTracker

S = 10**9
CH = ["a", "b"]
RATIOS = [9.0, 1.2, 1.2, 0.5, 3.0, 0.5]   # score / threshold of six windows, 1 s apart


def _opened(many: bool) -> list:
    tr = AlertTracker(AlertPolicy(k=3, n=5, quiet_s=60))
    ts, scores = np.arange(1, 7) * S, np.array(RATIOS)
    flags, err = scores > 1.0, np.ones((6, 2))
    if many:
        return tr.observe_many("e", ts, scores, np.ones(6), flags, err, CH, "v1")
    return [e for i in range(6) for e in tr.observe("e", int(ts[i]), scores[i], 1.0, bool(flags[i]), err[i], CH, "v1")]


@pytest.mark.parametrize("many", [False, True], ids=["observe", "observe_many"])
def test_a_spike_then_two_mild_windows_open_a_critical_alert(many):
    events = _opened(many)
    assert [(e.state, e.severity, e.at // S) for e in events][:1] == [("open", "critical", 3)]
    assert events[0].started_at == 1 * S and events[0].score == pytest.approx(1.2)   # the opening window's


def test_the_band_of_the_history_survives_a_checkpoint_and_a_state_from_before_still_loads():
    policy = AlertPolicy(k=3, n=5, quiet_s=60)
    tr = AlertTracker(policy)
    for i, r in enumerate(RATIOS[:2]):   # the spike and one mild window, then a checkpoint
        tr.observe("e", (i + 1) * S, r, 1.0, True, np.ones(2), CH, "v1")
    state = tr.state_dict()
    back = AlertTracker(policy)
    back.load_state_dict(state)
    [event] = back.observe("e", 3 * S, 1.2, 1.0, True, np.ones(2), CH, "v1")
    assert (event.state, event.severity) == ("open", "critical")
    assert all(len(h) == 2 for e in state["entities"].values() for h in e["history"])   # what a release before reads
    for e in state["entities"].values():   # a snapshot written before bands were kept
        del e["bands"]
    old = AlertTracker(policy)
    old.load_state_dict(state)
    [event] = old.observe("e", 3 * S, 1.2, 1.0, True, np.ones(2), CH, "v1")
    assert (event.state, event.severity) == ("open", "warning")   # the spike's band was not stored
