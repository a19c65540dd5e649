"""Credentials in a URI setting never show: pyarrow takes `s3://KEY:SECRET@bucket/path`.

The start-up log line printed `model.registry`, `archive.root` and `retrain.history` whole,
and only `[kafka.client]` values were masked in log messages.
"""

from __future__ import annotations

import json
import logging

import pyarrow.fs as pafs

from stream_ae.registry import Registry
from stream_ae.stream.settings import load_settings
from test_settings_guards import logged

REGISTRY = "s3://AKIAEXAMPLE:wJalrXUtnFEMIsecret@models/reg"
ARCHIVE = "gs://svc:gsPASS99@hist/archive"


def test_uri_credentials_are_masked_in_the_settings_and_in_every_log_message():
    s = load_settings(env={"STREAM_AE_ARCHIVE__ROOT": ARCHIVE}, overrides=[f"model.registry={REGISTRY}"])
    shown = json.dumps(s.redacted())
    assert "wJalrXUtnFEMIsecret" not in shown and "gsPASS99" not in shown and "AKIAEXAMPLE" not in shown
    assert "s3://**********@models/reg" in shown and "gs://**********@hist/archive" in shown
    assert {"wJalrXUtnFEMIsecret", "gsPASS99"} <= set(s.secret_values())
    text = logged(s, "json", lambda: logging.getLogger("stream_ae.test").info(
        "cannot reach %s (key wJalrXUtnFEMIsecret)", REGISTRY))
    assert "cannot reach" in text and "wJalrXUtnFEMIsecret" not in text


def test_a_registry_names_its_uri_without_the_secret():
    reg = Registry(REGISTRY, filesystem=pafs.LocalFileSystem())
    assert repr(reg) == "Registry('s3://**********@models/reg')" and "secret" not in reg.root
