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
from typing import Any, Mapping, Sequence

import msgspec

from stream_ae.errors import ConfigError
from stream_ae.redaction import mask_all, strings, uri_secrets

from stream_ae.stream.client_settings import BOOL_WORDS, _accepted_keys
from stream_ae.stream.sections import (_MASK, SECRET_WORDS, AlertSettings,  # noqa: F401 - re-exported
                                       ArchiveSettings,
                                       BatchSettings, DriftSettings, InputSettings, KafkaSettings, ModelSettings,
                                       OpsSettings, RetrainSettings, Secret, ThresholdSettings,
                                       _DURATION_RE, _Section, parse_duration)

ENV_PREFIX = "STREAM_AE_"
CONFIG_ENV = "STREAM_AE_CONFIG"
PRODUCER_BATCH_BYTES = 256 * 1024  # the producers' batch.size unless kafka.client sets one (kafka_client_kwargs)


class Settings(_Section):
    """Every service setting; build it with :func:`load_settings`."""

    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    batch: BatchSettings = msgspec.field(default_factory=BatchSettings)
    threshold: ThresholdSettings = msgspec.field(default_factory=ThresholdSettings)
    alerts: AlertSettings = msgspec.field(default_factory=AlertSettings)
    input: InputSettings = msgspec.field(default_factory=InputSettings)
    drift: DriftSettings = msgspec.field(default_factory=DriftSettings)
    ops: OpsSettings = msgspec.field(default_factory=OpsSettings)
    archive: ArchiveSettings = msgspec.field(default_factory=ArchiveSettings)
    retrain: RetrainSettings = msgspec.field(default_factory=RetrainSettings)

    def __post_init__(self):
        if self.archive.group_id == self.kafka.group_id:
            raise ValueError(f"archive.group_id and kafka.group_id are both {self.kafka.group_id!r}: the archiver "
                             "and the detector each need a consumer group of their own")
        letters = self.archive.dead_letter_topic
        taken = {t: name for name, t in self.kafka.topics().items()}
        if letters in taken:
            raise ValueError(f"archive.dead_letter_topic and kafka.{taken[letters]} are both {letters!r}: the "
                             "archiver and the detector find the same bad readings, and each reading's letter "
                             "would be there twice; give the archiver a topic of its own")

    def redacted(self) -> dict:
        """Plain dict of every setting, secrets and the credentials of URIs masked: safe to log or print."""
        return mask_all(msgspec.to_builtins(self, enc_hook=_redact))

    def secret_values(self) -> list[str]:
        """The real values of every secret setting and URI credential (for the logs to mask wherever
        they appear): ``model.registry = "s3://KEY:SECRET@bucket/models"`` carries one."""
        kafka = [v.get_secret_value() for v in self.kafka.client.values() if isinstance(v, Secret)]
        in_uris = [x for text in strings(msgspec.to_builtins(self, enc_hook=_redact)) for x in uri_secrets(text)]
        return kafka + sorted(set(in_uris))

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
        if role == "producer":
            # a checkpoint's entity states are ~8.5 KB each: kafka-python's 16 KB batches sent
            # 4 096 of them (35 MB) in 0.83-0.94 s, 256 KB batches in 0.16-0.27 s (embedded broker);
            # under a broker's default 1 MB batch limit, and kafka-python reserves no memory for it
            out.setdefault("batch_size", PRODUCER_BATCH_BYTES)
        return out


def _redact(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return _MASK
    if isinstance(obj, types.MappingProxyType):
        return dict(obj)
    raise NotImplementedError(type(obj))


def load_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                  overrides: Sequence[str] = ()) -> Settings:
    """Defaults < TOML file < ``STREAM_AE_*`` environment < ``--set key=value`` overrides.

    ``path`` defaults to ``$STREAM_AE_CONFIG`` (no file when unset); ``env`` defaults to
    ``os.environ``. Raises :class:`ConfigError` naming the key, its source and close matches.
    """
    env = os.environ if env is None else env
    path = path if path not in (None, "") else env.get(CONFIG_ENV) or None
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        _merge(tree, origins, _read_toml(Path(path)), f"in {path}")
    for name in sorted(env):
        dotted = _env_key(name)
        if dotted:
            _set_dotted(tree, origins, dotted, _unset_if_empty(dotted, _stripped(dotted, env[name])),
                        f"from environment variable {name}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():   # what looks like a key only: the rest may be a mistyped secret
            shown = re.match(r"\s*[\w.]*", item).group().strip()
            shown = (shown + "..." if shown != item.strip() else shown) if shown else "with no key"
            raise ConfigError(f"--set {shown}: expected section.key=value, "
                              "e.g. kafka.group_id=g1")
        # the origin names the key only: a mistyped secret's value must not reach the error text
        _set_dotted(tree, origins, key.strip(), _unset_if_empty(key.strip(), _stripped(key.strip(), value)),
                    f"from --set {key.strip()}")
    _check_keys(tree, Settings, "", origins)
    _seconds_from_durations(tree)
    try:
        # strict=False lets "2000" from the environment or a flag fill an int field.
        return msgspec.convert(tree, Settings, strict=False, dec_hook=_dec_hook)
    except (msgspec.ValidationError, ConfigError) as exc:   # a section's own check may raise ConfigError
        raise ConfigError(_explain(str(exc), origins)) from None


def _seconds_from_durations(tree: dict, section: str = "") -> None:
    """A seconds setting (a key ending in ``_s``) may be written as a duration: ``quiet_s = "5m"``
    is 300. The client passthrough (``kafka.client``) is the client's own and left as given."""
    for key, value in tree.items():
        if isinstance(value, dict) and f"{section}{key}" != "kafka.client":
            _seconds_from_durations(value, f"{section}{key}.")
        elif key.endswith("_s") and isinstance(value, str) and _DURATION_RE.match(value):
            tree[key] = parse_duration(value, f"{section}{key}")


def add_settings_arguments(parser) -> None:
    """Add ``--config PATH`` and repeatable ``--set section.key=value`` to an argparse parser."""
    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"TOML settings file (default: ${CONFIG_ENV})")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        dest="settings_overrides", help="override one setting; repeatable")


def settings_from_args(args) -> Settings:
    """Settings from the arguments added by :func:`add_settings_arguments`."""
    return load_settings(args.config, overrides=args.settings_overrides)


def _stripped(dotted: str, value: str) -> str:
    """A flag's or variable's value without surrounding spaces; a secret's as given (a password
    may end in a space)."""
    return value if any(w in dotted for w in SECRET_WORDS) else value.strip()


def _unset_if_empty(dotted: str, value: str):
    """None for an empty value of a setting whose default is None (``STREAM_AE_THRESHOLD__Q=`` clears
    a file's ``threshold.q``); the value itself otherwise (an empty name or number is an error)."""
    if value != "":
        return value
    struct = Settings
    for part in dotted.split("."):
        field = next((f for f in msgspec.structs.fields(struct) if f.name == part), None) \
            if isinstance(struct, type) and issubclass(struct, msgspec.Struct) else None
        if field is None:
            return value   # unknown keys and passthrough maps are judged later
        struct = field.type
    return None if field.default is None else value


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"settings file {path} not found; check --config / {CONFIG_ENV}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"settings file {path} is not UTF-8 text; give a TOML file") from None
    except OSError as exc:   # a directory, no permission
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror or exc}; check --config / "
                          f"{CONFIG_ENV}") from None


def _env_key(name: str) -> str | None:
    """Dotted key of a settings variable, None for variables that are not settings."""
    if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
        return None
    rest = name[len(ENV_PREFIX):].lower()
    if "__" in rest:
        return ".".join(rest.split("__"))
    section = next((s for s in msgspec.structs.fields(Settings) if rest.startswith(s.name + "_")), None)
    if section is not None and _SERVICE_LINK.search(name) is None and _names_a_key(section, rest):
        # STREAM_AE_KAFKA_GROUP_ID: a typo. STREAM_AE_KAFKA_BOOTSTRAP_SERVICE_HOST, which Kubernetes
        # sets for a Service named stream-ae-kafka-bootstrap, is an unrelated variable
        key = rest[len(section.name) + 1:]
        key = "CLIENT__" + key[len("client_"):] if key.startswith("client_") else key
        raise ConfigError(f"environment variable {name}: separate section and key with a double "
                          f"underscore, e.g. {ENV_PREFIX}{section.name.upper()}__{key.upper()}")
    owners = [s.name for s in msgspec.structs.fields(Settings) for f in msgspec.structs.fields(s.type)
              if f.name == rest]
    if owners:   # STREAM_AE_LOG_FORMAT: a setting without its section
        raise ConfigError(f"environment variable {name} names no section; did you mean "
                          + " or ".join(f"{ENV_PREFIX}{o.upper()}__{rest.upper()}" for o in owners) + "?")
    return None


# the variables Kubernetes sets for each Service in the namespace (enableServiceLinks)
_SERVICE_LINK = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$")


def _names_a_key(section, rest: str) -> bool:
    """Whether ``rest`` (``<section>_<key>``) is one of the section's keys, nearly (one typo), or
    a key of its nested table (``kafka_client_...``)."""
    key = rest[len(section.name) + 1:]
    fields = [f.name for f in msgspec.structs.fields(section.type)]
    return bool(difflib.get_close_matches(key, fields, n=1, cutoff=0.9)) or \
        any(key.startswith(f + "_") for f in fields if f == "client")


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


# settings an earlier release had: what to do instead (shown after "unknown setting ...")
REMOVED = {
    "drift.delta": "; it was ADWIN's significance, and the drift watch no longer runs ADWIN (it "
                   "judges the mean log score over drift.horizon): delete the key",
}


def _check_keys(tree: Mapping, struct: type, prefix: str, origins: dict) -> None:
    fields = {f.name: f.type for f in msgspec.structs.fields(struct)}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown setting {dotted!r} ({_origin(dotted, origins)})"
                              + (REMOVED.get(dotted) or _suggest(key, prefix, fields)))
        kind = fields[key]
        if kind is bool and isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            tree[key] = BOOL_WORDS[value.strip().lower()]   # the words kafka.client.* reads too
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} must be a table of settings "
                                  f"({_origin(dotted, origins)})")
            _check_keys(value, kind, dotted + ".", origins)


def _suggest(key: str, prefix: str, fields: Mapping[str, Any]) -> str:
    import collections.abc
    import typing

    nested = [f for f, t in fields.items() if key.startswith(f + "_")   # kafka.client_x: a level joined
              and (typing.get_origin(t) is collections.abc.Mapping
                   or isinstance(t, type) and issubclass(t, msgspec.Struct))]
    if nested:
        return (f"; did you mean {prefix}{nested[0]}.{key[len(nested[0]) + 1:]!s}? (in the environment, "
                "separate every level with a double underscore)")
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
    key = next((k for k in named if k in origins), re.sub(r"\[\d+\]", "", where))   # a list's item: the list's
    others = [k for k in dict.fromkeys(named) if k in origins and k != key]   # "set a or b, not both": each one's
    source = "; ".join(f"{k} {_origin(k, origins)}" for k in (key, *others)) if others else _origin(key, origins)
    if key and text.startswith(f"{key}: "):
        text = text[len(key) + 2:]
    elif key and text.startswith(f"{key} "):   # the check's own sentence names the key
        return f"{text} ({source})"
    choices = _choices(key)
    if choices and text.startswith("Invalid enum value"):
        text += f"; choose one of: {', '.join(map(str, choices))}"
    elif text.startswith("Expected `bool`"):
        text += "; write true or false (or yes/no, on/off, 1/0)"
    elif key.endswith("_s") and text.startswith("Expected `float"):
        text += "; write seconds (300) or a duration with a unit s, m, h, d or w (5m)" if "got `str`" in text \
            else " seconds"
    return f"setting {key or where}: {text} ({source})"


def _choices(dotted: str) -> tuple:
    """The values a Literal-typed setting allows (empty for others)."""
    import typing

    kind: Any = Settings
    for part in dotted.split("."):
        fields = {f.name: f.type for f in msgspec.structs.fields(kind)} if isinstance(kind, type) \
            and issubclass(kind, msgspec.Struct) else {}
        if part not in fields:
            return ()
        kind = fields[part]
    args = [a for a in typing.get_args(kind) if a is not type(None)] if typing.get_origin(kind) is not None else []
    if typing.get_origin(kind) is typing.Literal:
        return typing.get_args(kind)
    literal = [a for a in args if typing.get_origin(a) is typing.Literal]   # Literal[...] | None
    return typing.get_args(literal[0]) if literal else ()


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is Secret:
        return Secret(obj)
    raise NotImplementedError(kind)
