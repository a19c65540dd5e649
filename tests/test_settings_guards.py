"""Settings as a user mistypes them: every mistake stops with one line that says what to fix,
and no secret reaches an error, a log line or a printed setting."""

from __future__ import annotations

import io
import json
import logging

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.settings import load_settings


def test_a_mistyped_secret_key_never_prints_its_value():
    with pytest.raises(ConfigError) as err:
        load_settings(env={}, overrides=["kafka.client.sasl_plain_pasword=HUNTER2"])
    assert "HUNTER2" not in str(err.value) and "did you mean kafka.client.sasl_plain_password" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_settings(env={"STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASWORD": "HUNTER2"})
    assert "HUNTER2" not in str(err.value)


def test_proxy_urls_are_masked_but_reach_the_client():
    s = load_settings(env={}, overrides=["kafka.client.socks5_proxy=socks5://user:PROXYPASS@proxy:1080"])
    assert "PROXYPASS" not in repr(s) and "PROXYPASS" not in json.dumps(s.redacted())
    assert s.kafka_client_kwargs("consumer")["socks5_proxy"] == "socks5://user:PROXYPASS@proxy:1080"
    assert "socks5://user:PROXYPASS@proxy:1080" in s.secret_values()


def logged(settings, fmt: str, emit) -> str:
    """What ``emit()`` logs through the service's logging (format ``fmt``, DEBUG) set up for ``settings``."""
    from stream_ae.stream import logs

    root = logging.getLogger()
    handlers, level, secrets = list(root.handlers), root.level, logs._SECRET_VALUES
    out = io.StringIO()
    try:
        logs.configure_logging(type("Ops", (), {"log_format": fmt, "log_level": "DEBUG"})(), out,
                               secrets=settings.secret_values())
        emit()
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
        logs._SECRET_VALUES = secrets
    return out.getvalue()


def test_secret_values_are_masked_in_any_log_message():
    """kafka-python logs a client's whole configuration at DEBUG, passwords included."""
    s = load_settings(env={"STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASSWORD": "HUNTER2"},
                      overrides=["ops.log_level=DEBUG"])

    def emit():
        logging.getLogger("kafka.admin.client").debug("Starting KafkaAdminClient with configuration: %s",
                                                      dict(s.kafka_client_kwargs("admin")))
        try:
            raise RuntimeError("login failed for password HUNTER2")
        except RuntimeError:
            logging.getLogger("stream_ae.test").exception("failed")

    for fmt in ("json", "text"):
        text = logged(s, fmt, emit)
        assert "sasl_plain_password" in text and "HUNTER2" not in text, text


@pytest.mark.parametrize("kind", ["directory", "binary"])
def test_a_settings_file_that_cannot_be_read_is_one_line(tmp_path, kind):
    path = tmp_path / "dir"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match="cannot read settings file|is not UTF-8 text"):
        load_settings(path, env={})


def test_an_empty_config_path_means_no_file():
    assert load_settings("", env={}).kafka.group_id == "stream-ae"


def test_an_environment_variable_without_its_section_is_named_with_the_right_one():
    with pytest.raises(ConfigError, match="STREAM_AE_LOG_FORMAT names no section; did you mean "
                                          "STREAM_AE_OPS__LOG_FORMAT"):
        load_settings(env={"STREAM_AE_LOG_FORMAT": "text"})
    assert load_settings(env={"STREAM_AE_SOMETHING_ELSE": "x"})   # not a setting's name: not ours


@pytest.mark.parametrize("item, expected", [
    ("ops.log_level=debug", "choose one of: DEBUG, INFO, WARNING, ERROR"),
    ("threshold.kind=spot", "choose one of: evt, quantile"),
    ("drift.enabled=maybe", "write true or false"),
    ("kafka.client.compression_type=zstdd", "choose one of: gzip, snappy, lz4, zstd"),
    ("kafka.client.acks=all", "kafka.client.acks is set by stream-ae itself"),
    ("kafka.client.enable_auto_commit=true", "committed only after the alerts are acknowledged"),
    ("kafka.client.heartbeat_interval_ms=20000", "must be below kafka.session_timeout_ms"),
    ("kafka.state_topic=readings", "kafka.readings_topic and kafka.state_topic are both 'readings'"),
    ("archive.group_id=stream-ae", "the archiver and the detector each need a consumer group"),
])
def test_a_bad_value_says_what_to_write(item, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env={}, overrides=[item])


def test_values_from_flags_and_the_environment_are_stripped():
    s = load_settings(env={"STREAM_AE_BATCH__MAX_SIZE": " 64 "}, overrides=[" kafka.group_id = g2 "])
    assert (s.kafka.group_id, s.batch.max_size) == ("g2", 64)


def test_a_list_item_of_the_wrong_type_names_the_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[archive]\npartition_by = [1]\n')
    with pytest.raises(ConfigError, match=f"archive.partition_by.*in {path}"):
        load_settings(path, env={})


def test_a_zero_window_or_hop_is_refused_not_replaced_by_the_preset():
    from stream_ae.commands import resolve_preset

    for flag in ({"window": 0}, {"hop": 0}):
        with pytest.raises(ConfigError, match="must be a positive integer, got 0"):
            resolve_preset("conv", "undercomplete", **flag)


def test_an_output_path_that_is_a_file_is_one_line_not_a_traceback(tmp_path, capsys):
    from stream_ae.cli import main

    taken = tmp_path / "taken"
    taken.write_text("x")
    assert main(["demo", "--offline", "--out", str(taken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stream-ae demo: error:") and str(taken) in err and "Traceback" not in err


def test_a_level_joined_by_one_underscore_is_named_with_the_right_key():
    with pytest.raises(ConfigError, match=r"did you mean kafka.client.sasl_plain_password\? \(in the environment"):
        load_settings(env={"STREAM_AE_KAFKA__CLIENT_SASL_PLAIN_PASSWORD": "x"})


def test_a_secret_keeps_its_surrounding_spaces():
    s = load_settings(env={"STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASSWORD": " pass word "})
    assert s.kafka_client_kwargs("consumer")["sasl_plain_password"] == " pass word "


@pytest.mark.parametrize("job", ["archive", "retrain"])
def test_a_job_run_through_the_cli_names_itself_so(job, capsys):
    from stream_ae.cli import main

    with pytest.raises(SystemExit):
        main(["job", job, "--help"])
    assert capsys.readouterr().out.startswith(f"usage: stream-ae job {job} ")


def test_the_archiver_dead_letters_to_a_topic_of_its_own():
    """Both services read the readings topic and find the same bad readings: on one topic each
    had two letters, and a detector's restore took the archiver's for its own."""
    from stream_ae.stream.settings import load_settings

    assert load_settings(env={}).archive.dead_letter_topic != load_settings(env={}).kafka.dead_letter_topic
    with pytest.raises(ConfigError, match=r"archive.dead_letter_topic and kafka.dead_letter_topic are both"):
        load_settings(env={}, overrides=["archive.dead_letter_topic=readings.dead-letter"])
