"""Secrets stay out of what a user sees, and variables that Kubernetes sets do not stop the service.

Before: a mistyped ``--set kafka.client.sasl_plain_password:...`` echoed the password in its
error; the retrain job printed a history URI's credentials (``s3://KEY:SECRET@...``) and wrote
them into its report file; and ``STREAM_AE_KAFKA_BOOTSTRAP_SERVICE_HOST``, which Kubernetes sets
for a Service named ``stream-ae-kafka-bootstrap`` (a Strimzi cluster named ``stream-ae``), stopped
the service with advice that led to another error."""

from __future__ import annotations

import json

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.settings import load_settings

SECRET = "hunter2-SECRET"


@pytest.mark.parametrize("item", [f"kafka.client.sasl_plain_password:{SECRET}",
                                  f"kafka.client.sasl_plain_password {SECRET}", f"={SECRET}"])
def test_a_mistyped_set_does_not_echo_its_value(item):
    with pytest.raises(ConfigError, match="expected section.key=value") as err:
        load_settings(env={}, overrides=[item])
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("name", ["STREAM_AE_KAFKA_PORT", "STREAM_AE_KAFKA_BOOTSTRAP_SERVICE_HOST",
                                  "STREAM_AE_KAFKA_BOOTSTRAP_SERVICE_PORT", "STREAM_AE_KAFKA_BOOTSTRAP_PORT_9092_TCP",
                                  "STREAM_AE_KAFKA_BOOTSTRAP_PORT_9092_TCP_ADDR", "STREAM_AE_MODEL_SERVICE_PORT_HTTP"])
def test_kubernetes_service_link_variables_are_not_settings(name):
    assert load_settings(env={name: "tcp://10.0.0.7:9092"}) == load_settings(env={})


@pytest.mark.parametrize("name, hint", [("STREAM_AE_KAFKA_GROUP_ID", "STREAM_AE_KAFKA__GROUP_ID"),
                                        ("STREAM_AE_KAFKA_BOOTSTRAP_SERVER", "STREAM_AE_KAFKA__BOOTSTRAP_SERVER"),
                                        ("STREAM_AE_KAFKA_CLIENT_SASL_PLAIN_PASSWORD",
                                         "STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASSWORD")])
def test_a_setting_written_with_one_underscore_is_still_an_error_with_the_right_name(name, hint):
    with pytest.raises(ConfigError, match=hint + "$"):
        load_settings(env={name: "x"})


def test_the_retrain_job_masks_a_uri_credential_in_its_error_and_its_report(tmp_path, capsys):
    from jobs.retrain import main

    reports = tmp_path / "reports"
    code = main([f"--set=retrain.history=file://AKIA:{SECRET}@{tmp_path / 'history'}",
                 f"--set=model.registry={tmp_path / 'models'}", "--set=model.deployment=prod",
                 f"--set=retrain.report_dir={reports}", "--set=ops.log_format=text"])
    captured = capsys.readouterr()
    assert code == 1 and "error:" in captured.err
    assert SECRET not in captured.err + captured.out and "AKIA" not in captured.err
    written = list(reports.glob("*.json"))
    assert written and all(SECRET not in p.read_text() for p in written)
    assert json.loads(written[0].read_text())["decision"] == "failed"


def test_a_sections_own_check_names_where_each_key_it_names_came_from():
    """Before: a ConfigError raised by a section's check (retrain.noise_std on the undercomplete
    variant) named no source, and "not both" named only one of the two keys' sources."""
    with pytest.raises(ConfigError, match=r"retrain.noise_std is read by the denoising variant only.*"
                                          r"\(from --set retrain.noise_std\)$"):
        load_settings(env={}, overrides=["retrain.noise_std=0.1"])
    with pytest.raises(ConfigError, match=r"not both \(model.deployment from environment variable "
                                          r"STREAM_AE_MODEL__DEPLOYMENT; model.artifact from --set model.artifact\)$"):
        load_settings(env={"STREAM_AE_MODEL__DEPLOYMENT": "prod"}, overrides=["model.artifact=models/v1"])
