"""Model registry: versions, atomic deployment pointers, history, rollback, compare-and-swap."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_ae.errors import ConfigError
from stream_ae.registry import PromotionConflict, Registry


def tiny_artifact(seed: int = 0, channels=("a", "b"), window: int = 8):
    """An untrained conv artifact with a calibrated quantile threshold (fast; weights differ by seed)."""
    from stream_ae.artifact import Artifact, make_version, utc_now, weights_bytes
    from stream_ae.data.layout import Layout
    from stream_ae.data.windows import WindowSpec
    from stream_ae.models import ModelConfig, build_model
    from stream_ae.scaling import ChannelScaler
    from stream_ae.thresholds import ThresholdSpec, build_threshold
    from stream_ae.thresholds.base import threshold_to_dict

    torch.manual_seed(seed)
    config = ModelConfig(kind="conv", n_channels=len(channels), window=window, hidden=4, latent=2, kernel=3)
    state = {k: v.detach().clone() for k, v in build_model(config).state_dict().items()}
    created = utc_now()
    threshold = build_threshold(ThresholdSpec(kind="quantile", quantile=0.99, warmup=10))
    threshold.fit(np.random.default_rng(seed).gamma(2.0, size=200).astype(np.float32))
    return Artifact(version=make_version(config, created, weights_bytes(state)), model=config,
                    window=WindowSpec(length=window), layout=Layout(), channels=tuple(channels),
                    scaler=ChannelScaler().fit(np.random.default_rng(seed).normal(size=(50, len(channels)))),
                    threshold=threshold_to_dict(threshold), training={"metrics": {"val_loss": 0.1 * seed}},
                    state_dict=state, created_at=created)


@pytest.fixture(scope="module")
def artifacts():
    return [tiny_artifact(seed) for seed in range(3)]


@pytest.fixture
def registry(tmp_path, artifacts):
    reg = Registry(tmp_path / "models")
    for art in artifacts:
        reg.publish(art)
    return reg


def test_versions_list_what_was_published(registry, artifacts):
    listed = registry.versions()
    assert sorted(v["version"] for v in listed) == sorted(a.version for a in artifacts)
    v = next(v for v in listed if v["version"] == artifacts[1].version)
    assert (v["kind"], v["variant"], v["metrics"]) == ("conv", "undercomplete", {"val_loss": 0.1})
    assert v["created_at"] == artifacts[1].created_at


def test_promote_points_resolve_at_the_artifact_and_records_history(registry, artifacts):
    from stream_ae.artifact import load_artifact

    v0, v1 = artifacts[0].version, artifacts[1].version
    assert registry.current("prod") is None
    registry.promote("prod", v0, reason="first")
    registry.promote("prod", v1, reason="better val loss")
    assert registry.current("prod") == v1
    assert load_artifact(registry.resolve("prod")).version == v1
    pointer = registry.pointer("prod")
    assert pointer["previous"] == v0 and pointer["reason"] == "better val loss"
    hist = registry.history("prod")
    assert [(h["version"], h["previous"], h["reason"]) for h in hist] == [(v0, None, "first"),
                                                                          (v1, v0, "better val loss")]
    assert registry.deployments() == ["prod"]
    # the pointer is one JSON file; no temp file or lock is left behind
    files = sorted(p.name for p in Path(registry.path, "deployments").iterdir())
    assert files == ["prod", "prod.json"]
    assert json.loads((Path(registry.path) / "deployments" / "prod.json").read_text())["version"] == v1


def test_unknown_version_is_an_error_naming_the_known_ones(registry, artifacts):
    with pytest.raises(ConfigError) as err:
        registry.promote("prod", "conv-undercomplete-20990101T000000Z-deadbeef")
    assert all(a.version in str(err.value) for a in artifacts)
    assert registry.current("prod") is None
    with pytest.raises(ConfigError, match="no version"):
        registry.resolve("prod")
    with pytest.raises(ConfigError, match="deployment name"):
        registry.current("../etc")


def test_rollback_walks_back_and_is_recorded(registry, artifacts):
    v0, v1, v2 = (a.version for a in artifacts)
    for v in (v0, v1, v2):
        registry.promote("prod", v)
    assert registry.rollback("prod")["version"] == v1
    assert registry.rollback("prod")["version"] == v0
    with pytest.raises(ConfigError, match="no earlier version"):
        registry.rollback("prod")
    assert registry.current("prod") == v0
    hist = registry.history("prod")
    assert [h["reason"] for h in hist[-2:]] == ["rollback", "rollback"]
    assert [h["version"] for h in hist] == [v0, v1, v2, v1, v0]
    # history files are never rewritten: one file per promotion
    assert len(list((Path(registry.path) / "deployments" / "prod" / "history").iterdir())) == 5


def test_compare_and_swap_refuses_a_stale_promotion(registry, artifacts):
    v0, v1, v2 = (a.version for a in artifacts)
    registry.promote("prod", v0, expect=None)
    champion = registry.current("prod")           # two retrain jobs read the same champion ...
    registry.promote("prod", v1, expect=champion)  # ... the first one wins
    with pytest.raises(PromotionConflict, match=v1):
        registry.promote("prod", v2, expect=champion)
    assert registry.current("prod") == v1
    assert len(registry.history("prod")) == 2


def test_concurrent_promotions_with_the_same_token_have_one_winner(registry, artifacts):
    v0 = artifacts[0].version
    registry.promote("prod", v0)
    results, barrier = [], threading.Barrier(8)

    def attempt(i):
        barrier.wait()
        try:
            registry.promote("prod", artifacts[1 + i % 2].version, expect=v0)
            results.append("won")
        except PromotionConflict:
            results.append("lost")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 7 + ["won"]
    assert len(registry.history("prod")) == 2


def test_a_remote_filesystem_registry_round_trips(tmp_path, artifacts):
    """Any pyarrow filesystem: the in-memory mock stands in for s3:// / gs://."""
    from pyarrow.fs import _MockFileSystem

    from stream_ae.artifact import load_artifact
    from stream_ae.scoring import Scorer

    reg = Registry("bucket/models", filesystem=_MockFileSystem(), cache_dir=str(tmp_path / "cache"))
    assert not reg.local
    for art in artifacts[:2]:
        reg.publish(art)
    assert [v["version"] for v in reg.versions()] == sorted(a.version for a in artifacts[:2])
    reg.promote("prod", artifacts[0].version)
    reg.promote("prod", artifacts[1].version, expect=artifacts[0].version)
    reg.rollback("prod")
    path = reg.resolve("prod")
    assert path.is_relative_to(tmp_path / "cache")
    loaded = load_artifact(path)
    x = np.random.default_rng(0).normal(size=(4, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(Scorer(loaded, device="cpu").score_windows(x).score,
                                  Scorer(artifacts[0], device="cpu").score_windows(x).score)
    assert [h["version"] for h in reg.history("prod")] == [artifacts[0].version, artifacts[1].version,
                                                           artifacts[0].version]
