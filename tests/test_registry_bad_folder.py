"""One unreadable version folder (a `cp -r` still copying, a hand-written manifest) no longer
breaks `models list` and every error message that lists the known versions."""
from __future__ import annotations

import logging

import pytest

from stream_ae.cli import main
from stream_ae.errors import ConfigError
from stream_ae.registry import Registry
from test_registry import tiny_artifact


@pytest.mark.parametrize("manifest", ["{\"version\": ", "[1, 2]"])
def test_a_bad_manifest_is_skipped_with_a_warning_and_the_rest_listed(tmp_path, capsys, caplog, manifest):
    reg = Registry(tmp_path / "models")
    v1 = reg.publish(tiny_artifact(0))
    (tmp_path / "models" / "copied-by-hand").mkdir()
    (tmp_path / "models" / "copied-by-hand" / "manifest.json").write_text(manifest)
    with caplog.at_level(logging.WARNING, logger="stream_ae.registry"):
        assert [v["version"] for v in reg.versions()] == [v1]
    assert "skipping the folder copied-by-hand" in caplog.text
    with pytest.raises(ConfigError, match=f"'v-typo' is not in the registry .*known versions: {v1}"):
        reg.promote("prod", "v-typo")
    assert main(["models", "--registry", str(tmp_path / "models"), "list"]) == 0
    assert v1 in capsys.readouterr().out
