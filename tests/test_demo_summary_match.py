"""The demo's summary credits each alert to one injected anomaly at most, and an alert that
opened before a fault could reach a window (on normal data) does not find it.

Before: one alert spanning a spike and a noise burst 780 s later (the default seed's unit_0)
counted both as found, and an alert opened up to 600 s before a fault was "found after 0 s"."""

from __future__ import annotations

from stream_ae.data.synthetic import InjectedAnomaly
from stream_ae.demo.summary import Detection, match

S = 10**9
TOLERANCE, LEAD = 600 * S, 40 * S   # the demo's: a 60-reading window, 4 windows of the 3-of-5 rule, 10 s apart
SPIKE = InjectedAnomaly("unit_0", "spike", 10_000 * S, 10_050 * S, ("ch_1",))
BURST = InjectedAnomaly("unit_0", "noise_burst", 10_830 * S, 11_200 * S, ("ch_2",))


def test_one_alert_over_two_faults_finds_one_of_them():
    s = match([BURST, SPIKE], [Detection("unit_0", 10_400 * S, 11_300 * S)], TOLERANCE, LEAD)
    assert [a.kind for a, _ in s.found] == ["spike"] and s.missed == [BURST] and s.false_alerts == []
    assert s.delays_s().tolist() == [400.0]


def test_an_alert_opened_on_normal_data_before_a_fault_is_a_false_alert_and_the_fault_missed():
    early = Detection("unit_0", BURST.start_ts - 590 * S, BURST.start_ts + 70 * S)
    s = match([BURST], [early], TOLERANCE, LEAD)
    assert s.found == [] and s.missed == [BURST] and s.false_alerts == [early]


def test_the_k_of_n_lead_is_a_signed_delay_and_an_alert_that_flaps_within_a_fault_is_not_false():
    first = Detection("unit_0", BURST.start_ts - 30 * S, BURST.start_ts + 100 * S)
    again = Detection("unit_0", BURST.start_ts + 200 * S, BURST.end_ts)
    s = match([BURST], [again, first], TOLERANCE, LEAD)
    assert s.delays_s().tolist() == [-30.0] and s.false_alerts == []
    assert "30 s before its first reading" in "\n".join(s.lines())
