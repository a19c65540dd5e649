"""What `serve` says when it cannot start (session 36's new-user review): a registry folder that
does not exist is named as such, and an address no broker answers at is one line, without
kafka-python's two dozen connection errors before it."""
import logging
import socket

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.serve import ModelWatcher, check_broker
from stream_ae.stream.settings import load_settings


def test_a_deployment_in_a_registry_folder_that_does_not_exist_says_so(tmp_path):
    settings = load_settings(env={}, overrides=[f"model.registry={tmp_path / 'nomodels'}",
                                                "model.deployment=production"])
    with pytest.raises(ConfigError, match="a folder that does not exist \\(check model.registry\\)"):
        ModelWatcher(settings).initial(stop=None, metrics=None)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_broker_is_one_error_without_the_clients_own_lines(caplog):
    settings = load_settings(env={}, overrides=[f"kafka.bootstrap_servers=127.0.0.1:{closed_port()}"])
    logging.getLogger("kafka").setLevel(logging.WARNING)   # as configure_logging leaves it
    try:
        with pytest.raises(ConfigError, match="no Kafka broker"):
            check_broker(settings, timeout_s=1.0)
    finally:
        logging.getLogger("kafka").setLevel(logging.NOTSET)
    assert [r for r in caplog.records if r.name.startswith("kafka")] == []
