"""Model artifacts: ``root/<version>/{model.safetensors, manifest.json}``.

Weights are stored with safetensors and everything else as JSON, so loading an
artifact never unpickles anything. Saving is atomic (temp dir, fsync, rename)
and an existing version is never overwritten.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from stream_ae import __version__ as PACKAGE_VERSION, durable
from stream_ae.data.layout import Layout
from stream_ae.data.windows import WindowSpec
from stream_ae.errors import ArtifactError, ConfigError, SchemaMismatch
from stream_ae.models import build_model
from stream_ae.models.config import ModelConfig
from stream_ae.scaling import ChannelScaler

FORMAT_VERSION = 1
READABLE_FORMATS = (1,)
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
REQUIRED_KEYS = (
    "format_version", "version", "model", "channels", "layout", "window", "scaler",
    "threshold", "training", "package_version", "created_at", "weights",
)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Artifact:
    """Everything needed to score data the way the model was trained: weights and context."""

    version: str
    model: ModelConfig
    window: WindowSpec
    layout: Layout
    channels: tuple[str, ...]
    scaler: ChannelScaler
    threshold: dict  # {"spec": ThresholdSpec.to_dict(), "state": Threshold.state_dict()}
    training: dict  # span, rows, entities, windows, epochs, metrics
    state_dict: dict[str, torch.Tensor]
    created_at: str
    package_version: str = PACKAGE_VERSION
    format_version: int = FORMAT_VERSION


def utc_now() -> str:
    """Current time as an ISO-8601 UTC string with second precision, e.g. ``2024-05-01T12:00:00Z``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def weights_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """Serialise a state dict to safetensors bytes (contiguous CPU copies; deterministic)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return save_safetensors(tensors)


def make_version(model: ModelConfig, created_at: str, weights: bytes) -> str:
    """``{kind}-{variant}-{YYYYmmddTHHMMSSZ}-{8 hex of the weights sha256}``.

    >>> make_version(ModelConfig(kind="conv", variant="sparse"), "2024-05-01T12:00:00Z", b"w")
    'conv-sparse-20240501T120000Z-50e721e4'
    """
    stamp = _parse_utc(created_at).strftime("%Y%m%dT%H%M%SZ")
    return f"{model.kind}-{model.variant}-{stamp}-{hashlib.sha256(weights).hexdigest()[:8]}"


def _parse_utc(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"created_at must be an ISO-8601 UTC time, got {text!r}") from exc
    return when.astimezone(dt.timezone.utc) if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _manifest(artifact: Artifact, sha256: str) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "version": artifact.version,
        "model": {"kind": artifact.model.kind, "variant": artifact.model.variant,
                  "config": artifact.model.to_dict()},
        "channels": list(artifact.channels),
        "layout": artifact.layout.to_dict(),
        "window": dataclasses.asdict(artifact.window),
        "scaler": artifact.scaler.to_dict(),
        "threshold": artifact.threshold,
        "training": artifact.training,
        "package_version": artifact.package_version,
        "created_at": artifact.created_at,
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256},
    }


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_artifact(artifact: Artifact, root: str | os.PathLike) -> Path:
    """Write ``root/<version>/`` atomically and return its path.

    Raises ArtifactError if that version already exists (versions are immutable).
    """
    if not _VERSION_RE.match(artifact.version or ""):
        raise ArtifactError(
            f"artifact version {artifact.version!r} is not a safe directory name; "
            "build it with stream_ae.artifact.make_version"
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / artifact.version
    if final.exists():
        raise ArtifactError(f"artifact {final} already exists; versions are never overwritten")
    weights = weights_bytes(artifact.state_dict)
    manifest = _manifest(artifact, hashlib.sha256(weights).hexdigest())
    try:
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"artifact manifest is not JSON-safe (NaN/inf or an object): {exc}") from exc
    tmp = root / f".tmp-{artifact.version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_synced(tmp / WEIGHTS_FILE, weights)
        _write_synced(tmp / MANIFEST_FILE, text.encode("utf-8"))
        durable.fsync(tmp)
        try:
            os.rename(tmp, final)  # fails if a non-empty `final` appeared meanwhile
        except OSError as exc:
            raise ArtifactError(f"artifact {final} already exists; versions are never overwritten") from exc
        durable.fsync(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Read and validate an artifact directory (or its manifest.json). Never unpickles."""
    path = Path(path)
    if path.name == MANIFEST_FILE:
        path = path.parent
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path} is a file; give an artifact directory (it holds {MANIFEST_FILE} and "
                            f"{WEIGHTS_FILE}), e.g. one `stream-ae train` printed or `stream-ae models list` names")
    if not path.is_dir():
        raise ArtifactError(f"artifact directory {path} does not exist")
    manifest = _read_manifest(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ArtifactError(f"artifact {path} has no {WEIGHTS_FILE}")
    weights = weights_path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != manifest["weights"].get("sha256"):
        raise ArtifactError(
            f"{weights_path} does not match the sha256 in its manifest: the weights were changed or "
            "corrupted; re-copy the artifact or retrain"
        )
    try:
        state_dict = load_safetensors(weights)
    except (SafetensorError, ValueError) as exc:
        raise ArtifactError(f"{weights_path} is not a valid safetensors file: {exc}") from exc
    try:
        model_config = ModelConfig.from_dict(manifest["model"]["config"])
        window = WindowSpec(**manifest["window"])
        layout = Layout.from_dict(manifest["layout"])
        scaler = ChannelScaler.from_dict(manifest["scaler"])
    except (ConfigError, TypeError, KeyError) as exc:
        raise ArtifactError(f"artifact {path} has an invalid manifest: {exc}") from exc
    _check_weights(path, build_model(model_config).state_dict(), state_dict)
    channels = manifest["channels"]
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ArtifactError(f"artifact {path} has an invalid manifest: 'channels' must be a list of names, "
                            f"got {channels!r:.200}")
    channels = tuple(channels)
    if scaler.n_channels != len(channels) or model_config.n_channels != len(channels):
        raise ArtifactError(
            f"artifact {path} is inconsistent: {len(channels)} channels but the scaler has "
            f"{scaler.n_channels} and the model {model_config.n_channels}"
        )
    if window.length != model_config.window:
        raise ArtifactError(f"artifact {path} is inconsistent: windows of {window.length} readings but a model "
                            f"of {model_config.window}; re-export it or retrain")
    threshold = manifest["threshold"]
    if not isinstance(threshold, dict) or not {"spec", "state"} <= set(threshold):
        raise ArtifactError(f"artifact {path}: manifest 'threshold' must hold 'spec' and 'state'")
    _check_threshold(path, threshold)
    return Artifact(
        version=manifest["version"], model=model_config, window=window, layout=layout,
        channels=channels, scaler=scaler, threshold=threshold, training=manifest["training"],
        state_dict=state_dict, created_at=manifest["created_at"],
        package_version=manifest["package_version"], format_version=manifest["format_version"],
    )


def reload_shape(artifact: "Artifact") -> tuple[tuple[str, ...], int]:
    """What a hot reload keeps from one model to the next: the channels, in order, and the
    window length (the consumer's per-entity buffers are built for them)."""
    return tuple(artifact.channels), int(artifact.model.window)


def _check_threshold(path: Path, threshold: dict) -> None:
    """The calibration must build and load here and now, not first on a stream's poll loop (an
    artifact of a newer release with a threshold option this one lacks, a hand edit)."""
    from stream_ae.thresholds import ThresholdSpec, build_threshold

    try:
        rule = build_threshold(ThresholdSpec.from_dict(threshold["spec"]))
        if threshold["state"] is not None:
            rule.load_state_dict(threshold["state"])
    except (ConfigError, ArtifactError, TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"artifact {path}: its threshold calibration cannot be used: {exc}") from None


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST_FILE
    if not file.is_file():
        raise ArtifactError(f"artifact {path} has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{file} must hold a JSON object")
    fmt = manifest.get("format_version")
    if fmt not in READABLE_FORMATS:
        raise ArtifactError(
            f"{file} has format_version {fmt!r}; this build (stream_ae {PACKAGE_VERSION}) reads "
            f"format_version {', '.join(map(str, READABLE_FORMATS))}; upgrade stream_ae or retrain"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{file} lacks required key(s) {missing}; the artifact is incomplete")
    if not isinstance(manifest["weights"], dict) or not isinstance(manifest["model"], dict):
        raise ArtifactError(f"{file}: 'weights' and 'model' must be JSON objects")
    return manifest


def _check_weights(path: Path, expected: dict, found: dict) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(f"unexpected tensors {extra}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes))
        raise ArtifactError(
            f"weights in {path} do not fit the model its manifest describes: " + ", ".join(parts)
        )


def check_channels(artifact: Artifact, channels) -> None:
    """Raise SchemaMismatch unless ``channels`` equals the artifact's channels, in order.

    >>> art = Artifact.__new__(Artifact); art.channels = ("a", "b"); art.version = "v1"
    >>> check_channels(art, ["a", "b"])
    >>> check_channels(art, ["b", "a"])
    Traceback (most recent call last):
    ...
    stream_ae.errors.SchemaMismatch: model v1: the data has the same channels in another order: data ['b', 'a'], model ['a', 'b']; reorder the columns (Layout.channels) to the model's order
    """
    got = tuple(channels)
    want = tuple(artifact.channels)
    if got == want:
        return
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing channel(s) {missing}")
        if extra:
            parts.append(f"extra channel(s) {extra}")
        raise SchemaMismatch(
            f"model {artifact.version}: the data has " + " and ".join(parts)
            + f"; the model was trained on {list(want)}; select exactly those channels "
            "(Layout.channels) or retrain on the new schema"
        )
    if len(got) != len(want):
        raise SchemaMismatch(f"model {artifact.version}: the data repeats channels: {list(got)}")
    raise SchemaMismatch(
        f"model {artifact.version}: the data has the same channels in another order: data {list(got)}, "
        f"model {list(want)}; reorder the columns (Layout.channels) to the model's order"
    )
