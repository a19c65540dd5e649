"""Registry guards: what an operator's repeated, mistaken or interrupted action must not do.

A deploy script run twice, a hand-edited pointer, a version this release cannot calibrate, a
download that fails half-way.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from stream_ae.artifact import load_artifact
from stream_ae.errors import ArtifactError, ConfigError
from stream_ae.registry import Registry
from test_registry import tiny_artifact


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "models")
    versions = [reg.publish(tiny_artifact(seed)) for seed in range(2)]
    return reg, versions


def test_promoting_the_serving_version_again_changes_nothing(registry):
    reg, (v1, v2) = registry
    reg.promote("prod", v1)
    first = reg.promote("prod", v2)
    again = reg.promote("prod", v2, reason="deploy script run twice")
    assert again == first == reg.pointer("prod")
    assert [h["version"] for h in reg.history("prod")] == [v1, v2]
    assert reg.rollback("prod")["version"] == v1   # one step back, not back to v2 itself


def test_rollback_skips_a_re_promotion_an_earlier_release_recorded(registry):
    reg, (v1, v2) = registry
    reg.promote("prod", v1)
    reg.promote("prod", v2)
    path = os.path.join(reg.path, "deployments", "prod.json")
    record = json.loads(open(path).read())
    record["lineage"] = [v1, v2, v2]   # what promote(v2) twice wrote before this release
    with open(path, "w") as f:
        json.dump(record, f)
    assert reg.rollback("prod")["version"] == v1


@pytest.mark.parametrize("content", ['"conv-x"', '{"deployment": "prod", "ver": "conv-x"}', "[1, 2]"])
def test_a_pointer_of_the_wrong_shape_is_an_error_that_says_what_to_do(registry, content):
    reg, (v1, _) = registry
    reg.promote("prod", v1)
    with open(os.path.join(reg.path, "deployments", "prod.json"), "w") as f:
        f.write(content)
    with pytest.raises(ArtifactError, match="not a pointer record.*Promote a version again"):
        reg.current("prod")
    reg.promote("prod", v1, reason="rewrite the pointer")   # what the message says to do
    assert reg.current("prod") == v1


def _uncalibratable(seed: int):
    art = tiny_artifact(seed)
    spec = {**art.threshold["spec"], "option_of_a_newer_release": 3}
    return dataclasses.replace(art, threshold={"spec": spec, "state": art.threshold["state"]})


def test_a_version_whose_threshold_does_not_load_is_refused_at_load_and_promotion(registry):
    """Such a version used to pass load and promotion and stop a consumer at its first batch
    after the hot reload (and every restart after it)."""
    reg, (v1, _) = registry
    bad = reg.publish(_uncalibratable(5))
    with pytest.raises(ArtifactError, match="threshold calibration cannot be used.*option_of_a_newer_release"):
        load_artifact(reg.artifact_path(bad))
    reg.promote("prod", v1)
    with pytest.raises(ArtifactError, match=f"version {bad} cannot be used"):
        reg.promote("prod", bad)
    assert reg.current("prod") == v1


def test_a_corrupt_calibration_state_is_refused_at_load(tmp_path):
    art = tiny_artifact(0)
    state = {**art.threshold["state"], "seen": "many"}
    reg = Registry(tmp_path / "models")
    bad = reg.publish(dataclasses.replace(art, threshold={"spec": art.threshold["spec"], "state": state}))
    with pytest.raises(ArtifactError, match="threshold calibration cannot be used"):
        load_artifact(reg.artifact_path(bad))


def test_a_failed_download_leaves_nothing_in_the_cache_and_names_the_version(tmp_path):
    from pyarrow.fs import _MockFileSystem

    fs = _MockFileSystem()
    cache = tmp_path / "cache"
    reg = Registry("bucket/models", filesystem=fs, cache_dir=str(cache))
    v = reg.publish(tiny_artifact(0))
    fs.delete_file(f"bucket/models/{v}/model.safetensors")   # a GET that fails
    for _ in range(2):
        with pytest.raises(ArtifactError, match=f"cannot fetch version {v}"):
            reg.artifact_path(v)
    assert sorted(os.listdir(cache)) == []


def test_the_history_of_an_unknown_deployment_says_so(registry, capsys):
    from stream_ae.cli import main

    reg, (v1, _) = registry
    reg.promote("prod", v1)
    assert main(["models", "--registry", reg.path, "history", "--deployment", "prdo"]) == 1
    err = capsys.readouterr().err
    assert "deployment 'prdo' has no promotions" in err and "deployments: prod" in err


def test_a_file_given_as_an_artifact_is_named_as_a_file(tmp_path):
    taken = tmp_path / "history.parquet"
    taken.write_bytes(b"PAR1")
    with pytest.raises(ArtifactError, match="history.parquet is a file; give an artifact directory"):
        load_artifact(taken)


def test_rolling_back_a_deployment_never_promoted_names_the_known_ones_and_writes_nothing(tmp_path):
    typo = tmp_path / "modles"
    with pytest.raises(ConfigError, match=r"'prod' has never been promoted .*deployments: \(none\)"):
        Registry(typo).rollback("prod")
    assert not typo.exists()
