"""`stream-ae bench drift` runs end to end and its figures say what the plant did (no timing asserted)."""

import json

from stream_ae.bench.drift import CHANGE_DAY, run_drift_bench


def test_the_drift_bench_scores_a_week_and_the_sensor_swap_raises_the_level_from_its_day(tmp_path, capsys):
    out = tmp_path / "drift.json"
    result = run_drift_bench(seeds=(8,), json_path=out)
    assert json.loads(out.read_text()) == result and '"gain_from_day_6"' in capsys.readouterr().out
    seed = result["seeds"]["8"]
    plain, swapped = seed["as_generated"], seed[f"gain_from_day_{CHANGE_DAY}"]
    assert plain["windows"] == swapped["windows"] > 30_000                     # 7 days x 4 entities
    assert list(plain["daily_mean_log_score"]) == [f"day_{d}" for d in range(4, 11)]
    for day in range(4, CHANGE_DAY):          # the same model, the same readings before the swap
        assert plain["daily_mean_log_score"][f"day_{day}"] == swapped["daily_mean_log_score"][f"day_{day}"]
    for day in range(CHANGE_DAY + 1, 11):     # a sensor reading 1.3x is reconstructed worse
        assert swapped["daily_mean_log_score"][f"day_{day}"] > plain["daily_mean_log_score"][f"day_{day}"]
    assert plain["first_day_hourly_mean_range"] > 0.2                            # the rhythm is there
    for event in plain["events"] + swapped["events"]:
        assert event["day"] > 4.0 and abs(event["shift"]) >= 0.2                 # judged after a whole day
