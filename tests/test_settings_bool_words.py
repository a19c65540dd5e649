"""Every true/false setting reads the same words from the environment or a --set: before session 31
``kafka.client.*`` took yes/no and on/off, and the rest of the settings refused them."""
from __future__ import annotations

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.settings import load_settings


@pytest.mark.parametrize("word, value", [("true", True), ("Yes", True), ("on", True), ("1", True),
                                         ("false", False), ("NO", False), (" off ", False), ("0", False)])
def test_a_bool_setting_reads_the_words_kafka_client_reads(word, value):
    env = {"STREAM_AE_DRIFT__ENABLED": word, "STREAM_AE_KAFKA__CLIENT__SSL_CHECK_HOSTNAME": word}
    settings = load_settings(env=env, overrides=[f"retrain.run_on_drift={word}"])
    assert settings.drift.enabled is value and settings.retrain.run_on_drift is value
    assert settings.kafka.client["ssl_check_hostname"] is value


@pytest.mark.parametrize("word", ["", "ja", "2"])
def test_other_words_are_refused_with_the_words_there_are(word):
    for env in ({"STREAM_AE_DRIFT__ENABLED": word}, {"STREAM_AE_KAFKA__CLIENT__SSL_CHECK_HOSTNAME": word}):
        with pytest.raises(ConfigError, match=r"true or false \(or yes/no, on/off, 1/0\)"):
            load_settings(env=env)


def test_a_string_setting_keeps_a_bool_word_as_it_is():
    assert load_settings(env={"STREAM_AE_KAFKA__GROUP_ID": "on"}).kafka.group_id == "on"
