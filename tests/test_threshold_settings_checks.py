"""[threshold] and [alerts] values that cannot work stop at settings load, naming the key and
where it came from; options of the other rule than a model's are ignored and keep its calibration.

Before: ``threshold.q=0.05`` with ``level=0.98``, ``quantile`` options with ``kind = "evt"``,
``factor = inf`` and ``alerts.quiet_s = inf`` passed the loader and failed only after the broker
check and the model load, without the key's name; ``threshold.factor`` on an EVT model dropped
its calibration, and every entity warmed up again with no alerts meanwhile."""

from __future__ import annotations

import logging
import tomllib
import types

import msgspec
import numpy as np
import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.sections import ThresholdSettings
from stream_ae.stream.settings import load_settings
from stream_ae.stream.threshold_start import calibrated_threshold
from stream_ae.thresholds import EvtThreshold, ThresholdSpec, threshold_to_dict
from test_settings import EXAMPLE


@pytest.mark.parametrize("sets, message", [
    (["threshold.q=0.05", "threshold.level=0.98"], r"threshold.q \(0.05\) must be smaller than 1 - threshold.level"),
    (["threshold.kind=evt", "threshold.factor=1.5"], "threshold.factor is an option of the quantile rule"),
    (["threshold.kind=quantile", "threshold.q=0.01"], "threshold.q is an option of the evt rule"),
    (["threshold.q=0.01", "threshold.quantile=0.99"], "set the options of one rule"),
    (["threshold.factor=1"], "threshold.factor must be a number above 1"),
    (["threshold.factor=inf"], "threshold.factor must be a number above 1"),
    (["alerts.quiet_s=inf"], "alerts.quiet_s must be a finite number"),
    (["alerts.update_interval_s=inf"], "alerts.update_interval_s must be a finite number"),
    (["alerts.silence_s=inf"], "alerts.silence_s must be a finite number"),
])
def test_values_that_cannot_work_stop_at_load_with_the_key_and_its_source(sets, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(env={}, overrides=sets)
    assert "--set" in str(err.value)


def test_one_rules_options_together_still_load():
    s = load_settings(env={}, overrides=["threshold.kind=quantile", "threshold.quantile=0.995", "threshold.factor=1.1"])
    assert (s.threshold.quantile, s.threshold.factor) == (0.995, 1.1)
    assert load_settings(env={}, overrides=["threshold.q=0.0005", "threshold.level=0.99"]).threshold.q == 0.0005


def test_the_other_rules_option_on_a_model_keeps_its_calibration_and_says_so(caplog):
    cal = EvtThreshold(ThresholdSpec())
    cal.fit(np.random.default_rng(0).exponential(size=5000))
    artifact = types.SimpleNamespace(threshold=threshold_to_dict(cal), version="v1")
    overrides = {k: v for k, v in msgspec.structs.asdict(
        load_settings(env={}, overrides=["threshold.factor=1.5"]).threshold).items() if v is not None}
    with caplog.at_level(logging.WARNING):
        spec, state = calibrated_threshold(artifact, overrides)
    assert spec == ThresholdSpec.from_dict(artifact.threshold["spec"]) and state is not None
    assert "threshold.factor: not an option of model v1's evt rule, ignored" in caplog.text


def test_the_example_documents_every_threshold_key():
    text = EXAMPLE.read_text()
    section = text[text.index("[threshold]"):text.index("[alerts]")]
    for key in msgspec.structs.fields(ThresholdSettings):
        assert f"# {key.name} = " in section, key.name
    assert tomllib.loads(text)   # still valid TOML
