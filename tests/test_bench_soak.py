"""``stream-ae bench soak``: the stream goes on in order pass after pass (a hot reload included),
and churn evicts and parks exactly the retired entity ids, within the cap."""

from __future__ import annotations

import json

from test_stream_detector import make_artifact

from stream_ae.bench.soak import CHURN_GROUPS, _names, run_soak_bench, slope_kib_per_m


def test_a_quarter_of_the_ids_is_renamed_each_pass():
    base = [f"u{i}" for i in range(8)]
    a, b = _names(base, 0), _names(base, 1)
    assert sum(a[e] != b[e] for e in base) == len(base) // CHURN_GROUPS
    assert len(set().union(*(_names(base, k).values() for k in range(CHURN_GROUPS)))) == 8 + 3 * 2


def test_the_slope_is_fitted_over_the_second_half():
    assert slope_kib_per_m([1, 2, 3, 4, 5, 6], [100.0, 999.0, 100.0, 100.0, 100.0, 100.0]) == 0.0
    assert slope_kib_per_m([10**6, 2 * 10**6, 3 * 10**6, 4 * 10**6], [1.0, 1.0, 1.0, 2.0]) is None  # 2 points
    assert slope_kib_per_m([0, 10**6, 2 * 10**6, 3 * 10**6, 4 * 10**6, 5 * 10**6],
                           [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]) == 1024.0  # 1 MiB a million readings


def test_the_soak_scores_every_window_and_bounds_the_entities(tmp_path, one_torch_thread):
    artifact = make_artifact()
    result = run_soak_bench(n=16_500, entities=8, json_path=tmp_path / "soak.json", out_dir=tmp_path,
                            artifact=artifact, pass_readings=1500)  # 11 passes: a hot reload after the 10th
    assert json.loads((tmp_path / "soak.json").read_text()) == result
    lead = artifact.window.length - 1  # readings an entity needs before its first window
    steady, churn = result["phases"]["steady"], result["phases"]["churn"]
    # no reading was taken for a replay or out of order: the passes continue each stream
    assert steady["windows_scored"] == steady["readings"] - 8 * lead
    assert steady["evictions"] == 0 and steady["entity_names_seen"] == steady["live_entities_end"] == 8
    # churn: each new id warms up once; every retired id is evicted once and parked up to the cap
    assert churn["entity_names_seen"] > 8
    assert churn["windows_scored"] == churn["readings"] - churn["entity_names_seen"] * lead
    assert churn["evictions"] == churn["entity_names_seen"] - 8 and churn["live_entities_end"] == 8
    assert churn["parked_entities_end"] == min(churn["evictions"], 8)
    for phase in (steady, churn):
        assert phase["readings"] >= 16_500 and phase["slope_kib_per_million_readings"] is not None
        assert phase["hot_reloads"] == 1
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    for phase in (steady, churn):
        assert phase["heap_in_use_mib_end"] > 0 and phase["python_blocks_end"] > 0
