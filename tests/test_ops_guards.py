"""Operations guards from the session-31 review: a registry URI's credentials never reach the
CLI's one-line error, and the client metrics /readyz reads cannot be switched off."""
from __future__ import annotations

import pytest

from stream_ae.errors import ConfigError, StreamAEError
from stream_ae.stream.settings import load_settings

URI = "s3://AKIAEXAMPLE:wJalrSECRETKEY@bucket/models"


@pytest.fixture
def logging_kept():
    """serve routes the root logger to the stderr of the moment (capsys's, closed after the test):
    put the handlers, levels and masked secrets back."""
    import logging

    from stream_ae.stream import logs

    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    saved = (list(root.handlers), root.level, kafka.level, logs._SECRET_VALUES)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
    kafka.setLevel(saved[2])
    logs._SECRET_VALUES = saved[3]


def test_serve_without_a_model_names_the_registry_masked(capsys, logging_kept):
    from stream_ae.cli import main

    assert main(["serve", "--set", f"model.registry={URI}", "--set", "ops.log_format=text",
                 "--set", "ops.metrics_port=0", "--set", "ops.health_port=0"]) == 2
    err = capsys.readouterr().err
    assert "no model" in err and "s3://**********@bucket/models" in err and "wJalrSECRETKEY" not in err


@pytest.mark.parametrize("error, code", [(ConfigError, 2), (StreamAEError, 1), (OSError, 1)])
def test_every_cli_error_masks_uri_credentials(monkeypatch, capsys, error, code):
    import stream_ae.cli as cli

    def fails(args):
        raise error(f"cannot read {URI}/v1")

    monkeypatch.setitem(cli.COMMANDS, "bench", fails)
    assert cli.main(["bench", "drift"]) == code
    err = capsys.readouterr().err
    assert "s3://**********@bucket/models/v1" in err and "wJalrSECRETKEY" not in err and "AKIAEXAMPLE" not in err


@pytest.mark.parametrize("key, value", [("metrics_enabled", "false"), ("metric_group_prefix", "mine")])
def test_the_client_metrics_readyz_reads_cannot_be_switched_off(key, value):
    with pytest.raises(ConfigError, match=rf"kafka.client.{key} is set by stream-ae itself.*heartbeat"):
        load_settings(env={f"STREAM_AE_KAFKA__CLIENT__{key.upper()}": value})
