"""Credentials in a URI setting never show: pyarrow takes `s3://KEY:SECRET@bucket/path`.

The start-up log line printed `model.registry`, `archive.root` and `retrain.history` whole,
and only `[kafka.client]` values were masked in log messages.
"""

from __future__ import annotations

import io
import json
import logging

import pyarrow.fs as pafs

from stream_ae.registry import Registry
from stream_ae.stream.settings import load_settings

REGISTRY = "s3://AKIAEXAMPLE:wJalrXUtnFEMIsecret@models/reg"
ARCHIVE = "gs://svc:gsPASS99@hist/archive"


def test_uri_credentials_are_masked_in_the_settings_and_in_every_log_message(monkeypatch):
    from stream_ae.stream import logs

    s = load_settings(env={"STREAM_AE_ARCHIVE__ROOT": ARCHIVE}, overrides=[f"model.registry={REGISTRY}"])
    shown = json.dumps(s.redacted())
    assert "wJalrXUtnFEMIsecret" not in shown and "gsPASS99" not in shown and "AKIAEXAMPLE" not in shown
    assert "s3://**********@models/reg" in shown and "gs://**********@hist/archive" in shown
    assert {"wJalrXUtnFEMIsecret", "gsPASS99"} <= set(s.secret_values())

    monkeypatch.setattr(logs, "_SECRET_VALUES", ())
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    try:
        logs.configure_logging(type("Ops", (), {"log_format": "json", "log_level": "INFO"})(), out,
                               secrets=s.secret_values())
        logging.getLogger("stream_ae.test").info("cannot reach %s (key wJalrXUtnFEMIsecret)", REGISTRY)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    assert "cannot reach" in out.getvalue() and "wJalrXUtnFEMIsecret" not in out.getvalue()


def test_a_registry_names_its_uri_without_the_secret():
    reg = Registry(REGISTRY, filesystem=pafs.LocalFileSystem())
    assert repr(reg) == "Registry('s3://**********@models/reg')" and "secret" not in reg.root
