"""Service settings: one frozen, validated object from TOML file < environment < flags.

* file: ``load_settings("stream-ae.toml")`` (or ``STREAM_AE_CONFIG=path``);
* environment: ``STREAM_AE_<SECTION>__<KEY>``, nested with ``__``, e.g.
  ``STREAM_AE_KAFKA__BOOTSTRAP_SERVERS`` or ``STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASSWORD``;
* flags: ``--set kafka.group_id=detector-2``.

Unknown keys and wrong types are :class:`~stream_ae.errors.ConfigError` naming the key and
where it came from. Passwords and tokens are :class:`Secret`: masked in ``repr``, in
:meth:`Settings.redacted` and in logs; :meth:`Settings.kafka_client_kwargs` hands the real
values to kafka-python. The window and model hyperparameters are not here: they live in
the model artifact.

>>> s = load_settings(env={}, overrides=["kafka.group_id=g2", "batch.max_size=64"])
>>> s.kafka.group_id, s.batch.max_size
('g2', 64)
"""
from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import msgspec
from msgspec import Meta

from stream_ae.errors import ConfigError

ENV_PREFIX = "STREAM_AE_"
CONFIG_ENV = "STREAM_AE_CONFIG"
_MASK = "**********"
_SECRET_WORDS = ("password", "secret", "token")


class Secret:
    """A string that never shows itself: ``repr``/``str`` give ``'**********'``.

    >>> s = Secret("hunter2"); s, str(s), s.get_secret_value()
    (**********, '**********', 'hunter2')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = str(value)

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


Port = Annotated[int, Meta(ge=0, le=65535, description="0 disables")]
Prob = Annotated[float, Meta(gt=0.0, lt=1.0)]


class KafkaSettings(_Section):
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "stream-ae"
    session_timeout_ms: Annotated[int, Meta(ge=1000, le=3_600_000)] = 10_000
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    readings_topic: str = "readings"
    alerts_topic: str = "alerts"
    dead_letter_topic: str = "readings.dead-letter"
    state_topic: str = "stream-ae.state"
    client: Mapping[str, Any] = msgspec.field(default_factory=dict)  # kafka-python passthrough

    def __post_init__(self):
        msgspec.structs.force_setattr(self, "client", types.MappingProxyType(_client_config(self.client)))


class ModelSettings(_Section):
    registry: str = "models"               # directory or URI of the model registry
    deployment: str | None = None          # name of a deployment in the registry, or ...
    artifact: str | None = None            # ... a path to one artifact version
    device: str = "auto"
    reload_interval_s: Annotated[float, Meta(ge=0.0)] = 60.0   # 0: never look for a new version

    def __post_init__(self):
        if self.deployment and self.artifact:
            raise ValueError("set model.deployment or model.artifact, not both")


class BatchSettings(_Section):
    max_size: Annotated[int, Meta(ge=1)] = 1024
    max_wait_ms: Annotated[int, Meta(ge=0)] = 100
    torch_threads: Annotated[int, Meta(ge=0)] = 1  # model threads; 0 keeps torch's default (all cores)


class ThresholdSettings(_Section):
    """Overrides of the artifact's calibrated threshold; ``None`` keeps the artifact's value."""

    kind: Literal["evt", "quantile"] | None = None
    q: Prob | None = None
    level: Prob | None = None
    quantile: Prob | None = None
    factor: Annotated[float, Meta(gt=0.0)] | None = None
    warmup: Annotated[int, Meta(ge=0)] | None = None


class AlertSettings(_Section):
    k: Annotated[int, Meta(ge=1)] = 3                  # open after k flagged windows ...
    n: Annotated[int, Meta(ge=1)] = 5                  # ... among the last n
    update_interval_s: Annotated[float, Meta(ge=0.0)] = 60.0
    quiet_s: Annotated[float, Meta(ge=0.0)] = 300.0    # resolve after this long unflagged

    def __post_init__(self):
        if self.k > self.n:
            raise ValueError(f"alerts.k ({self.k}) must not exceed alerts.n ({self.n})")


class InputSettings(_Section):
    max_message_bytes: Annotated[int, Meta(ge=64)] = 65_536
    unknown_fields: Literal["reject", "ignore"] = "reject"
    late_policy: Literal["dead_letter", "drop"] = "dead_letter"   # late/out_of_order/duplicate
    max_entities: Annotated[int, Meta(ge=1)] = 100_000


class OpsSettings(_Section):
    metrics_port: Port = 9108
    health_port: Port = 8080
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


def parse_duration(text: str, key: str = "duration") -> float:
    """Seconds in ``"90s"``, ``"15m"``, ``"12h"``, ``"30d"`` or ``"2w"``.

    >>> parse_duration("3d"), parse_duration("1.5h")
    (259200.0, 5400.0)
    """
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(f"{key}={text!r} is not a duration; write a number and a unit s, m, h, d or w, e.g. '30d'")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


class RetrainSettings(_Section):
    """The retraining job (``python -m jobs.retrain``): spans, preset, promotion rule, where to write."""

    history: str | None = None               # Parquet history, path or URI; None: archive.root (the archiver's output)
    deployment: str | None = None            # None: model.deployment
    model: str = "conv"                      # preset name (stream_ae.presets)
    variant: str = "undercomplete"
    train_span: str = "30d"                  # the challenger trains on [now - holdout - train_span, now - holdout)
    holdout_span: str = "3d"                 # both models are compared on [now - holdout, now)
    align: str = "1h"                        # `now` is floored to this: a retry in the same slot redoes the same run
    interval: str = "1d"                     # --schedule: run when the last successful retrain is older
    run_on_drift: bool = False               # --schedule: also run when a drift marker is newer
    error_tolerance: Annotated[float, Meta(ge=0.0)] = 0.05        # median error <= champion's * (1 + tol)
    alert_rate_tolerance: Annotated[float, Meta(ge=0.0)] = 0.10   # alert rate <= champion's * (1 + tol) + slack
    alert_rate_slack: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.005
    recall_tolerance: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0  # recall >= champion's - tol (labels only)
    labels: str | None = None                # Parquet/CSV of labelled events or operator feedback
    report_dir: str = "retrain-reports"
    lock_timeout_s: Annotated[float, Meta(ge=0.0)] = 3600.0       # wait this long for a run training the same data
    min_holdout_windows: Annotated[int, Meta(ge=1)] = 100
    device: str = "auto"
    seed: int = 0
    epochs: Annotated[int, Meta(ge=1)] | None = None              # None: the preset's
    max_windows: Annotated[int, Meta(ge=1)] | None = None
    window: Annotated[int, Meta(ge=2)] | None = None

    def __post_init__(self):
        for key in ("train_span", "holdout_span", "align", "interval"):
            seconds = parse_duration(getattr(self, key), f"retrain.{key}")
            if seconds <= 0 and key != "interval":
                raise ValueError(f"retrain.{key} must be longer than 0")


class ArchiveSettings(_Section):
    """The archiver job (``python -m jobs.archive``): readings topic -> Parquet history."""

    root: str = "archive"                          # directory or URI of the Parquet history
    group_id: str = "stream-ae-archiver"           # its own consumer group, not the detector's
    partition_by: tuple[str, ...] | str = ("date",)   # ("date",) or ("date", "entity"); "date,entity" from --set
    file_rows: Annotated[int, Meta(ge=1)] = 250_000     # roll a file at this many rows per topic-partition ...
    max_file_age_s: Annotated[float, Meta(gt=0.0)] = 300.0   # ... or when its first row is this old
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"

    def __post_init__(self):
        raw = self.partition_by
        keys = tuple(k.strip() for k in (raw.split(",") if isinstance(raw, str) else raw) if k.strip())
        if keys not in (("date",), ("date", "entity")):
            raise ValueError(f"archive.partition_by must be [\"date\"] or [\"date\", \"entity\"], not {list(keys)}")
        msgspec.structs.force_setattr(self, "partition_by", keys)


class Settings(_Section):
    """Every service setting; build it with :func:`load_settings`."""

    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    batch: BatchSettings = msgspec.field(default_factory=BatchSettings)
    threshold: ThresholdSettings = msgspec.field(default_factory=ThresholdSettings)
    alerts: AlertSettings = msgspec.field(default_factory=AlertSettings)
    input: InputSettings = msgspec.field(default_factory=InputSettings)
    ops: OpsSettings = msgspec.field(default_factory=OpsSettings)
    archive: ArchiveSettings = msgspec.field(default_factory=ArchiveSettings)
    retrain: RetrainSettings = msgspec.field(default_factory=RetrainSettings)

    def redacted(self) -> dict:
        """Plain dict of every setting, secrets masked: safe to log or print."""
        return msgspec.to_builtins(self, enc_hook=_redact)

    def kafka_client_kwargs(self, role: str = "common") -> dict[str, Any]:
        """Keyword arguments for a kafka-python client, with the real secret values.

        ``role`` is ``"consumer"``, ``"producer"``, ``"admin"`` or ``"common"``; passthrough
        keys the role's client does not accept are left out (kafka-python rejects them).
        """
        accepted = _accepted_keys(role)
        k = self.kafka
        out: dict[str, Any] = {"bootstrap_servers": k.bootstrap_servers}
        for key, value in k.client.items():
            if key in accepted:
                out[key] = value.get_secret_value() if isinstance(value, Secret) else value
        if role == "consumer":
            out.update(group_id=k.group_id, session_timeout_ms=k.session_timeout_ms,
                       auto_offset_reset=k.auto_offset_reset)
            out.setdefault("heartbeat_interval_ms", min(3000, k.session_timeout_ms // 3))
        return out


def _redact(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return _MASK
    if isinstance(obj, types.MappingProxyType):
        return dict(obj)
    raise NotImplementedError(type(obj))


# ---- the kafka-python passthrough ------------------------------------------------------

_FIRST_CLASS = {"bootstrap_servers", "group_id", "session_timeout_ms", "auto_offset_reset"}


def _client_defaults(role: str) -> dict[str, Any]:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer  # slow import: lazily
    classes = {"consumer": [KafkaConsumer], "producer": [KafkaProducer],
               "admin": [KafkaAdminClient]}.get(role, [KafkaConsumer, KafkaProducer, KafkaAdminClient])
    configs = [c.DEFAULT_CONFIG for c in classes]
    if role in ("any", "common"):
        names = set.union(*map(set, configs)) if role == "any" else set.intersection(*map(set, configs))
    else:
        names = set(configs[0])
    merged = {k: v for c in configs for k, v in c.items() if k in names}
    # Only plain values can come from TOML; objects (selectors, contexts, callables) cannot.
    return {k: v for k, v in merged.items() if v is None or isinstance(v, (bool, int, float, str))}


def _accepted_keys(role: str) -> set[str]:
    if role not in ("common", "consumer", "producer", "admin"):
        raise ValueError(f"role must be common, consumer, producer or admin, not {role!r}")
    return set(_client_defaults(role))


def _client_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check passthrough keys against kafka-python's own, coerce env strings, wrap secrets."""
    if not raw:
        return {}
    known = _client_defaults("any")
    out = {}
    for key, value in raw.items():
        if key in _FIRST_CLASS:
            raise ValueError(f"kafka.client.{key}: set kafka.{key} instead")
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"kafka.client.{key} is not a kafka-python setting"
                             + (f"; did you mean kafka.client.{hint[0]}?" if hint else ""))
        default = known[key]
        if isinstance(value, Secret):
            value = value.get_secret_value()
        if isinstance(value, str) and isinstance(default, (bool, int, float)) and not isinstance(default, str):
            value = _parse_scalar(key, value, type(default))
        elif default is not None and type(value) is not type(default) \
                and not (isinstance(default, float) and type(value) is int):
            raise ValueError(f"kafka.client.{key}: expected {type(default).__name__}, "
                             f"got {type(value).__name__}")
        out[key] = Secret(value) if any(w in key for w in _SECRET_WORDS) else value
    return out


def _parse_scalar(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return lowered in ("true", "1", "yes", "on")
        raise ValueError(f"kafka.client.{key}: expected true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"kafka.client.{key}: expected {kind.__name__}, got {text!r}") from None


# ---- loading ---------------------------------------------------------------------------

def load_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                  overrides: Sequence[str] = ()) -> Settings:
    """Defaults < TOML file < ``STREAM_AE_*`` environment < ``--set key=value`` overrides.

    ``path`` defaults to ``$STREAM_AE_CONFIG`` (no file when unset); ``env`` defaults to
    ``os.environ``. Raises :class:`ConfigError` naming the key, its source and close matches.
    """
    env = os.environ if env is None else env
    path = path if path is not None else env.get(CONFIG_ENV) or None
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        _merge(tree, origins, _read_toml(Path(path)), f"in {path}")
    for name in sorted(env):
        dotted = _env_key(name)
        if dotted:
            _set_dotted(tree, origins, dotted, env[name], f"from environment variable {name}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. kafka.group_id=g1")
        _set_dotted(tree, origins, key.strip(), value, f"from --set {item}")
    _check_keys(tree, Settings, "", origins)
    try:
        # strict=False lets "2000" from the environment or a flag fill an int field.
        return msgspec.convert(tree, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), origins)) from None


def add_settings_arguments(parser) -> None:
    """Add ``--config PATH`` and repeatable ``--set section.key=value`` to an argparse parser."""
    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"TOML settings file (default: ${CONFIG_ENV})")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        dest="settings_overrides", help="override one setting; repeatable")


def settings_from_args(args) -> Settings:
    """Settings from the arguments added by :func:`add_settings_arguments`."""
    return load_settings(args.config, overrides=args.settings_overrides)


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"settings file {path} not found; check --config / {CONFIG_ENV}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _env_key(name: str) -> str | None:
    """Dotted key of a settings variable, None for variables that are not settings."""
    if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
        return None
    rest = name[len(ENV_PREFIX):].lower()
    if "__" in rest:
        return ".".join(rest.split("__"))
    section = next((s for s in msgspec.structs.fields(Settings) if rest.startswith(s.name + "_")), None)
    if section is not None:   # STREAM_AE_KAFKA_GROUP_ID: a typo, not an unrelated variable
        raise ConfigError(f"environment variable {name}: separate section and key with a double "
                          f"underscore, e.g. {ENV_PREFIX}{section.name.upper()}__"
                          f"{rest[len(section.name) + 1:].upper()}")
    return None


def _merge(tree: dict, origins: dict, new: Mapping, origin: str, prefix: str = "") -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(tree.get(key, {}), dict):
            _merge(tree.setdefault(key, {}), origins, value, origin, dotted + ".")
        else:
            tree[key] = value
            origins[dotted] = origin


def _set_dotted(tree: dict, origins: dict, dotted: str, value: Any, origin: str) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[:i + 1])} is a value, not a section ({origin})")
        node = child
    node[leaf] = value
    origins[dotted] = origin


def _check_keys(tree: Mapping, struct: type, prefix: str, origins: dict) -> None:
    fields = {f.name: f.type for f in msgspec.structs.fields(struct)}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown setting {dotted!r} ({_origin(dotted, origins)})"
                              + _suggest(key, prefix, fields))
        kind = fields[key]
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} must be a table of settings "
                                  f"({_origin(dotted, origins)})")
            _check_keys(value, kind, dotted + ".", origins)


def _suggest(key: str, prefix: str, fields: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.6)
    if not close and not prefix:      # a key without its section, e.g. "log_level"
        close = [f"{s.name}.{f.name}" for s in msgspec.structs.fields(Settings)
                 for f in msgspec.structs.fields(s.type) if f.name == key]
        return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"; did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else ""


def _origin(dotted: str, origins: Mapping[str, str]) -> str:
    if dotted in origins:
        return origins[dotted]
    under = sorted({o for k, o in origins.items() if k.startswith(dotted + ".")})
    return "; ".join(under) if under else "default"


def _explain(msg: str, origins: Mapping[str, str]) -> str:
    """Turn msgspec's 'Expected `int`, got `str` - at `$.kafka.x`' into a ConfigError text."""
    match = re.search(r" - at `\$\.?([^`]*)`$", msg)
    where = match.group(1) if match else ""
    text = msg[:match.start()] if match else msg
    named = re.findall(r"\b((?:[a-z_]+\.)+[a-z_]+)\b", text)   # keys a __post_init__ named
    key = next((k for k in named if k in origins), where)
    return f"setting {key or where}: {text} ({_origin(key, origins)})"


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is Secret:
        return Secret(obj)
    raise NotImplementedError(kind)
