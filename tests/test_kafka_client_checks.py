"""[kafka.client] values kafka-python would refuse only once a client is built, after the broker
check and the model load, stop at settings load with the key; values the service sets itself
are refused rather than silently overridden; a user's linger_ms is honoured.

Before: ``compression_type = "zstd"`` without its library and ``request_timeout_ms = 400``
crashed ``serve`` with a traceback after start-up, ``value_deserializer = "x"`` was accepted,
``max_poll_records`` and ``linger_ms`` were overridden without a word, ``api_version = [3, 7, 0]``
(TOML has no tuple) and a missing ``ssl_cafile`` were reported as "no Kafka broker answers"."""

from __future__ import annotations

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.settings import load_settings


@pytest.mark.parametrize("item, message", [
    ("kafka.client.request_timeout_ms=400", r"request_timeout_ms \(400\) must be larger than .*fetch_max_wait_ms"),
    ("kafka.client.value_deserializer=x", "value_deserializer is set by stream-ae itself"),
    ("kafka.client.ssl_context=x", "ssl_context is set by stream-ae itself"),
    ("kafka.client.transactional_id=t", "transactional_id is set by stream-ae itself"),
    ("kafka.client.max_poll_records=5", "max_poll_records is set by stream-ae itself"),
    ("kafka.client.ssl_cafile=/nonexistent/ca.pem", "ssl_cafile: no file at '/nonexistent/ca.pem'"),
    ("kafka.client.api_version=x", "api_version: expected a broker version"),
])
def test_client_values_that_would_fail_after_start_up_stop_at_load(item, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env={}, overrides=[item])


@pytest.mark.parametrize("installed", [False, True])
def test_a_compression_codec_needs_its_library(monkeypatch, installed):
    import kafka.codec

    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: installed)
    if installed:
        assert load_settings(env={}, overrides=["kafka.client.compression_type=zstd"]).kafka.client
    else:
        with pytest.raises(ConfigError, match="needs the zstandard package"):
            load_settings(env={}, overrides=["kafka.client.compression_type=zstd"])


def test_api_version_and_ssl_files_that_exist_load(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "s.toml").write_text(f'[kafka.client]\napi_version = [3, 7, 0]\nssl_cafile = "{ca}"\n')
    kwargs = load_settings(tmp_path / "s.toml", env={}).kafka_client_kwargs("consumer")
    assert kwargs["api_version"] == (3, 7, 0) and kwargs["ssl_cafile"] == str(ca)
    short = load_settings(env={}, overrides=["kafka.client.api_version=2.8"])
    assert short.kafka_client_kwargs()["api_version"] == (2, 8)


class Built(Exception):
    pass


def test_the_detectors_producer_takes_a_users_linger_ms_and_keeps_its_delivery_settings(monkeypatch):
    import kafka

    from stream_ae.stream.runner import StreamRunner
    from test_stream_detector import make_artifact

    seen = {}

    def producer(**kwargs):
        seen.update(kwargs)
        raise Built

    producer.DEFAULT_CONFIG = kafka.KafkaProducer.DEFAULT_CONFIG   # the settings read it
    monkeypatch.setattr(kafka, "KafkaProducer", producer)
    for item, linger in (([], 2), (["kafka.client.linger_ms=40"], 40)):
        settings = load_settings(env={}, overrides=[*item, "model.device=cpu"])
        with pytest.raises(Built):
            StreamRunner(settings, make_artifact(seed=0)).run(None)
        assert (seen["linger_ms"], seen["acks"], seen["enable_idempotence"]) == (linger, "all", True)


def test_check_broker_names_a_client_configuration_error_as_such(monkeypatch):
    import kafka
    from kafka.errors import KafkaConfigurationError

    from stream_ae.stream.serve import check_broker

    def admin(**kwargs):
        raise KafkaConfigurationError("ssl_check_hostname needs ssl")

    admin.DEFAULT_CONFIG = kafka.KafkaAdminClient.DEFAULT_CONFIG   # the settings read it
    monkeypatch.setattr(kafka, "KafkaAdminClient", admin)
    with pytest.raises(ConfigError, match="kafka-python refused the \\[kafka.client\\] settings: .*ssl_check_hostname"):
        check_broker(load_settings(env={}))
