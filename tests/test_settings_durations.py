"""A seconds setting (a key ending in ``_s``) takes a number or a duration with a unit, from the
file, the environment or a flag; a wrong one says which forms are accepted."""
from __future__ import annotations

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.settings import load_settings


def test_a_seconds_key_takes_a_duration_from_every_source(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[alerts]\nquiet_s = "5m"\n[archive]\nmax_file_age_s = "2h"\n[retrain]\nlock_timeout_s = 90\n')
    s = load_settings(path, env={"STREAM_AE_ALERTS__SILENCE_S": "1d"}, overrides=["kafka.checkpoint_interval_s=10s"])
    assert (s.alerts.quiet_s, s.archive.max_file_age_s, s.alerts.silence_s) == (300.0, 7200.0, 86_400.0)
    assert (s.kafka.checkpoint_interval_s, s.retrain.lock_timeout_s) == (10.0, 90.0)
    assert load_settings(env={}, overrides=["alerts.quiet_s=2.5"]).alerts.quiet_s == 2.5   # plain seconds as before


@pytest.mark.parametrize("override, says", [
    ("alerts.quiet_s=5 min", "write seconds (300) or a duration with a unit s, m, h, d or w (5m)"),
    ("kafka.checkpoint_interval_s=2h", "Expected `float` <= 3600.0 seconds"),   # the range, in its unit
    ("alerts.quiet_s=-1", "Expected `float` > 0.0 seconds"),
])
def test_a_wrong_seconds_value_says_what_is_accepted(override, says):
    with pytest.raises(ConfigError, match=override.split("=")[0]) as err:
        load_settings(env={}, overrides=[override])
    assert says in str(err.value)


def test_the_client_passthrough_is_left_as_given():
    """kafka-python's own keys are the client's: no unit conversion there."""
    with pytest.raises(ConfigError, match="kafka.client.request_timeout_ms: expected int, got '5m'"):
        load_settings(env={}, overrides=["kafka.client.request_timeout_ms=5m"])
