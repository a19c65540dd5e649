"""An empty value (`STREAM_AE_X=` from a template) clears an optional setting and is an error
for a name: it used to leave `kafka.group_id` empty, and to fail on `threshold.q` with
"Expected `float | null`, got `str`"."""

from __future__ import annotations

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.settings import load_settings


def test_an_empty_value_clears_an_optional_setting_from_the_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[threshold]\nq = 0.01\n[model]\ndeployment = 'prod'\n")
    assert load_settings(path, env={}).threshold.q == 0.01
    assert load_settings(path, env={"STREAM_AE_THRESHOLD__Q": ""}).threshold.q is None
    cleared = load_settings(path, env={}, overrides=["model.deployment=", "model.artifact=models/v1"])
    assert (cleared.model.deployment, cleared.model.artifact) == (None, "models/v1")


@pytest.mark.parametrize("name", ["KAFKA__GROUP_ID", "KAFKA__BOOTSTRAP_SERVERS", "KAFKA__ALERTS_TOPIC",
                                  "MODEL__REGISTRY", "ARCHIVE__ROOT"])
def test_an_empty_name_or_address_is_an_error_naming_the_variable(name):
    with pytest.raises(ConfigError, match=rf"length >= 1 \(from environment variable STREAM_AE_{name}\)"):
        load_settings(env={f"STREAM_AE_{name}": ""})
