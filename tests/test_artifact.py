import json
import pickle

import numpy as np
import pytest
import torch

from stream_ae.artifact import (
    Artifact, load_artifact, make_version, save_artifact, utc_now, weights_bytes, check_channels,
)
from stream_ae.data.layout import Layout
from stream_ae.data.windows import WindowSpec
from stream_ae.errors import ArtifactError, SchemaMismatch
from stream_ae.models import ModelConfig, build_model
from stream_ae.scaling import ChannelScaler
from stream_ae.scoring import Scorer
from stream_ae.thresholds import ThresholdSpec, build_threshold

CHANNELS = ("temp", "pressure", "flow")


def real_calibration() -> dict:
    """A real threshold calibration (load_artifact builds and loads it)."""
    rule = build_threshold(ThresholdSpec(kind="quantile", quantile=0.99))
    rule.fit(np.linspace(0.0, 1.0, 200))
    return {"spec": rule.spec.to_dict(), "state": rule.state_dict()}


def make_artifact(kind="conv", seed=0) -> Artifact:
    torch.manual_seed(seed)
    config = ModelConfig(kind=kind, n_channels=len(CHANNELS), window=16, hidden=8, latent=4)
    state = {k: v.clone() for k, v in build_model(config).state_dict().items()}
    rows = np.random.default_rng(seed).normal(size=(200, 3)).astype(np.float32) * 5 + 20
    created = utc_now()
    return Artifact(
        version=make_version(config, created, weights_bytes(state)), model=config,
        window=WindowSpec(length=16, hop=2, max_gap_s=30.0, max_fill=3), layout=Layout(entity="unit"),
        channels=CHANNELS, scaler=ChannelScaler().fit(rows),
        threshold=real_calibration(),
        training={"span": {"first": "2024-01-01T00:00:00Z", "last": "2024-01-02T00:00:00Z"}, "rows": 200},
        state_dict=state, created_at=created,
    )


def _windows(n=32, seed=3):
    return np.random.default_rng(seed).normal(20, 5, size=(n, 16, 3)).astype(np.float32)


@pytest.mark.parametrize("kind", ["conv", "lstm"])
def test_round_trip_gives_identical_scores(tmp_path, kind):
    art = make_artifact(kind)
    path = save_artifact(art, tmp_path)
    assert path == tmp_path / art.version
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors"]
    loaded = load_artifact(path)
    assert loaded.channels == CHANNELS and loaded.window == art.window and loaded.model == art.model
    assert loaded.layout == art.layout and loaded.threshold == art.threshold
    w = _windows()
    a = Scorer(art, device="cpu").score_windows(w)
    b = Scorer(loaded, device="cpu").score_windows(w)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.channel_error, b.channel_error)


def test_manifest_describes_the_model(tmp_path):
    art = make_artifact()
    manifest = json.loads((save_artifact(art, tmp_path) / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["model"]["kind"] == "conv" and manifest["model"]["config"]["hidden"] == 8
    assert manifest["channels"] == list(CHANNELS)
    assert manifest["window"] == {"length": 16, "hop": 2, "max_gap_s": 30.0, "max_fill": 3}
    assert manifest["layout"]["entity"] == "unit"
    assert len(manifest["weights"]["sha256"]) == 64
    assert art.version.startswith("conv-undercomplete-") and art.version.endswith(manifest["weights"]["sha256"][:8])


def test_existing_version_is_never_overwritten(tmp_path):
    art = make_artifact()
    path = save_artifact(art, tmp_path)
    before = (path / "model.safetensors").read_bytes()
    art.state_dict = {k: v + 1 for k, v in art.state_dict.items()}
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(art, tmp_path)
    assert (path / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [art.version]  # no temp dir left behind


def test_tampered_weights_are_refused(tmp_path):
    path = save_artifact(make_artifact(), tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(path)


def _rewrite_manifest(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_pickle_in_place_of_safetensors_is_never_unpickled(tmp_path, monkeypatch):
    path = save_artifact(make_artifact(), tmp_path)
    state = build_model(make_artifact().model).state_dict()
    blob = pickle.dumps(state)
    (path / "model.safetensors").write_bytes(blob)
    import hashlib

    _rewrite_manifest(path, lambda m: m["weights"].update(sha256=hashlib.sha256(blob).hexdigest()))

    def boom(*a, **k):
        raise AssertionError("pickle must never be used to load an artifact")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(torch, "load", boom)
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load_artifact(path)


def test_unknown_format_version_says_what_this_build_reads(tmp_path):
    path = save_artifact(make_artifact(), tmp_path)
    _rewrite_manifest(path, lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match=r"format_version 99.*reads format_version 1"):
        load_artifact(path)


def test_missing_manifest_key_is_named(tmp_path):
    path = save_artifact(make_artifact(), tmp_path)
    _rewrite_manifest(path, lambda m: m.pop("scaler"))
    with pytest.raises(ArtifactError, match="'scaler'"):
        load_artifact(path)


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope")
    path = save_artifact(make_artifact(), tmp_path)
    (path / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_artifact(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    path = save_artifact(make_artifact(), tmp_path)
    # the manifest now claims a wider model than the weights hold
    _rewrite_manifest(path, lambda m: m["model"]["config"].update(hidden=12))
    with pytest.raises(ArtifactError, match="shape mismatch"):
        load_artifact(path)


def test_channel_mismatch_messages():
    art = make_artifact()
    check_channels(art, list(CHANNELS))
    with pytest.raises(SchemaMismatch, match=r"missing channel\(s\) \['flow'\]"):
        check_channels(art, ["temp", "pressure"])
    with pytest.raises(SchemaMismatch, match=r"extra channel\(s\) \['vibration'\]"):
        check_channels(art, [*CHANNELS, "vibration"])
    with pytest.raises(SchemaMismatch) as err:
        check_channels(art, ["flow", "temp", "pressure"])
    msg = str(err.value)
    assert "another order" in msg
    assert "['flow', 'temp', 'pressure']" in msg and "['temp', 'pressure', 'flow']" in msg
