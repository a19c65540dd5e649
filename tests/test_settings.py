"""Service settings: precedence, unknown keys, wrong types, secrets kept out of sight."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import msgspec
import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.settings import (PRODUCER_BATCH_BYTES, Secret, Settings, add_settings_arguments, load_settings,
                                       settings_from_args)

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "stream-ae.example.toml"


@pytest.fixture
def toml(tmp_path):
    def write(text: str) -> Path:
        path = tmp_path / "stream-ae.toml"
        path.write_text(text)
        return path
    return write


def test_example_config_loads_and_differs_from_nothing_unknown():
    s = load_settings(EXAMPLE, env={})
    assert s.model.deployment == "production"
    assert s.kafka.client["client_id"] == "stream-ae"


def test_file_then_environment_then_flags(toml):
    path = toml('[kafka]\ngroup_id = "from-file"\nsession_timeout_ms = 4000\n'
                'bootstrap_servers = "file:9092"\n[batch]\nmax_size = 10\n')
    env = {"STREAM_AE_KAFKA__GROUP_ID": "from-env", "STREAM_AE_KAFKA__SESSION_TIMEOUT_MS": "5000",
           "STREAM_AE_OPS__METRICS_PORT": "0", "UNRELATED": "x", "STREAM_AE_SOMETHING": "ignored"}
    s = load_settings(path, env=env, overrides=["kafka.group_id=from-flag"])
    assert s.kafka.group_id == "from-flag"                 # flag beats env beats file
    assert s.kafka.session_timeout_ms == 5000              # env string became an int
    assert s.kafka.bootstrap_servers == "file:9092"
    assert (s.batch.max_size, s.ops.metrics_port, s.batch.max_wait_ms) == (10, 0, 100)


def test_config_path_from_environment(toml):
    path = toml("[batch]\nmax_wait_ms = 7\n")
    assert load_settings(env={"STREAM_AE_CONFIG": str(path)}).batch.max_wait_ms == 7


def test_argparse_helpers():
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    args = parser.parse_args(["--set", "alerts.k=2", "--set", "alerts.n=4"])
    s = settings_from_args(args)
    assert (s.alerts.k, s.alerts.n) == (2, 4)


def test_unknown_key_names_key_file_and_suggestion(toml):
    path = toml("[kafka]\nbootstrap_server = 'x:1'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    msg = str(err.value)
    assert "'kafka.bootstrap_server'" in msg and str(path) in msg
    assert "did you mean 'kafka.bootstrap_servers'" in msg


@pytest.mark.parametrize("env, overrides, expected", [
    ({"STREAM_AE_OPS__LOG_LEVL": "INFO"}, [], "did you mean 'ops.log_level'"),
    ({}, ["log_level=INFO"], "did you mean 'ops.log_level'"),
    ({}, ["kafak.group_id=x"], "did you mean 'kafka'"),
    ({}, ["kafka.client.sasl_plain_pasword=x"], "did you mean kafka.client.sasl_plain_password"),
    ({"STREAM_AE_KAFKA_GROUP_ID": "x"}, [], "STREAM_AE_KAFKA__GROUP_ID"),
])
def test_unknown_keys_from_env_and_flags(env, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_settings(env=env, overrides=overrides)


@pytest.mark.parametrize("text, key", [
    ("[kafka]\nsession_timeout_ms = 'fast'\n", "kafka.session_timeout_ms"),
    ("[kafka]\nsession_timeout_ms = 10\n", "kafka.session_timeout_ms"),      # below 1000
    ("[ops]\nlog_format = 'xml'\n", "ops.log_format"),
    ("[threshold]\nq = 1.5\n", "threshold.q"),
    ("[alerts]\nk = 6\nn = 5\n", "alerts.k"),
    ("[model]\nartifact = 'a'\ndeployment = 'b'\n", "model."),
    ("kafka = 3\n", "kafka"),
    ("[kafka.client]\nrequest_timeout_ms = 'soon'\n", "kafka.client.request_timeout_ms"),
])
def test_wrong_types_and_values_name_the_key_and_file(toml, text, key):
    path = toml(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert key in str(err.value) and str(path) in str(err.value)


def test_bad_toml_and_missing_file_are_config_errors(toml, tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(toml("[kafka\n"), env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="section.key=value"):
        load_settings(env={}, overrides=["no-equals-sign"])


def test_secrets_never_show_but_reach_kafka_python(toml, caplog):
    path = toml('[kafka.client]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n'
                'sasl_plain_username = "detector"\n')
    env = {"STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASSWORD": "hunter2",
           "STREAM_AE_KAFKA__CLIENT__SSL_PASSWORD": "keypass"}
    s = load_settings(path, env=env)
    assert isinstance(s.kafka.client["sasl_plain_password"], Secret)
    logging.getLogger("test").warning("settings: %s %s", s, s.redacted())
    for shown in (repr(s), str(s), str(s.redacted()), caplog.text):
        assert "hunter2" not in shown and "keypass" not in shown
    assert s.redacted()["kafka"]["client"]["sasl_plain_password"] == "**********"
    kwargs = s.kafka_client_kwargs("producer")
    assert kwargs["sasl_plain_password"] == "hunter2" and kwargs["ssl_password"] == "keypass"
    assert kwargs["sasl_plain_username"] == "detector"


def test_client_kwargs_fit_each_kafka_python_client():
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    s = load_settings(env={}, overrides=["kafka.client.fetch_max_bytes=1048576",
                                         "kafka.client.linger_ms=5", "kafka.session_timeout_ms=3000"])
    consumer = s.kafka_client_kwargs("consumer")
    producer = s.kafka_client_kwargs("producer")
    assert consumer["fetch_max_bytes"] == 1048576 and "linger_ms" not in consumer
    assert producer["linger_ms"] == 5 and "fetch_max_bytes" not in producer
    assert consumer["heartbeat_interval_ms"] < consumer["session_timeout_ms"] == 3000
    assert producer["batch_size"] == PRODUCER_BATCH_BYTES and "batch_size" not in consumer
    own = load_settings(env={}, overrides=["kafka.client.batch_size=65536"])
    assert own.kafka_client_kwargs("producer")["batch_size"] == 65536  # the user's value wins
    for role, cls in (("consumer", KafkaConsumer), ("producer", KafkaProducer),
                      ("admin", KafkaAdminClient)):
        assert set(s.kafka_client_kwargs(role)) <= set(cls.DEFAULT_CONFIG)


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(AttributeError):
        s.kafka.group_id = "other"          # type: ignore[misc]
    with pytest.raises(TypeError):
        s.kafka.client["client_id"] = "x"   # type: ignore[index]
    assert msgspec.structs.replace(s.batch, max_size=3).max_size == 3


def test_torch_threads_for_the_model_thread():
    assert load_settings(env={}).batch.torch_threads == 1  # measured: a 2nd thread halves the rate on 2 cores
    assert load_settings(env={}, overrides=["batch.torch_threads=0"]).batch.torch_threads == 0
    with pytest.raises(ConfigError, match="torch_threads"):
        load_settings(env={}, overrides=["batch.torch_threads=-1"])


def test_checkpoint_interval_is_a_validated_setting():
    s = load_settings(env={"STREAM_AE_KAFKA__CHECKPOINT_INTERVAL_S": "2.5"})
    assert s.kafka.checkpoint_interval_s == 2.5
    assert "checkpoint_interval_s" not in s.kafka_client_kwargs("consumer")   # ours, not the client's
    with pytest.raises(ConfigError, match="checkpoint_interval_s"):
        load_settings(env={}, overrides=["kafka.checkpoint_interval_s=0"])
