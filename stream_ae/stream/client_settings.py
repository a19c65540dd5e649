"""The kafka-python passthrough, ``[kafka.client]``: checked against the client's own
configuration names and types, and against what the service sets itself or would only find
wrong once a client is built (after the broker check and the model load)."""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Mapping

from stream_ae.stream.sections import SECRET_WORDS, Secret

_FIRST_CLASS = {"bootstrap_servers", "group_id", "session_timeout_ms", "auto_offset_reset"}
# what nothing lost, nothing doubled needs: the service sets these itself, whatever a user writes
_SERVICE_OWNED = {"acks": "alerts and dead letters are produced with acks=all",
                  "enable_idempotence": "the producers are idempotent",
                  "enable_auto_commit": "offsets are committed only after the alerts are acknowledged",
                  # /readyz judges the broker by the client's heartbeat metrics; without them it said ready
                  "metrics_enabled": "the health endpoint reads the client's heartbeat metrics",
                  "metric_group_prefix": "the health endpoint reads the client's heartbeat metrics",
                  # objects, or what the service decides: accepted, they failed after start-up or did nothing
                  **dict.fromkeys(("key_serializer", "value_serializer", "key_deserializer", "value_deserializer"),
                                  "the service encodes and decodes its records itself"),
                  "ssl_context": "it is an object; set ssl_cafile, ssl_certfile and ssl_keyfile",
                  "transactional_id": "the producers are idempotent, not transactional",
                  "max_poll_records": "each poll takes what the client holds, up to two batches (batch.max_size)"}
# compression_type -> the test of kafka.codec for its library, and the package that provides it
_CODECS = {"snappy": ("has_snappy", "python-snappy"), "lz4": ("has_lz4", "lz4"), "zstd": ("has_zstd", "zstandard")}
# passthrough keys with a fixed set of values: checked here, not by the client after start-up
_CLIENT_CHOICES = {"security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
                   "sasl_mechanism": ("PLAIN", "GSSAPI", "OAUTHBEARER", "SCRAM-SHA-256", "SCRAM-SHA-512",
                                      "AWS_MSK_IAM"),
                   "compression_type": ("gzip", "snappy", "lz4", "zstd"),
                   "client_dns_lookup": ("use_all_dns_ips", "resolve_canonical_bootstrap_servers_only")}


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


def client_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check passthrough keys against kafka-python's own, coerce env strings, wrap secrets."""
    if not raw:
        return {}
    known = _client_defaults("any")
    out = {}
    for key, value in raw.items():
        if key in _FIRST_CLASS:
            raise ValueError(f"kafka.client.{key}: set kafka.{key} instead")
        if key in _SERVICE_OWNED:
            raise ValueError(f"kafka.client.{key} is set by stream-ae itself ({_SERVICE_OWNED[key]}); "
                             "delete the key")
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
        if key == "api_version" and value is not None:   # TOML has no tuple: [3, 7, 0] or "3.7.0"
            value = _api_version(value)
        if key in _CLIENT_CHOICES and value is not None and value not in _CLIENT_CHOICES[key]:
            raise ValueError(f"kafka.client.{key} is {value!r}; choose one of: {', '.join(_CLIENT_CHOICES[key])}")
        out[key] = Secret(value) if any(w in key for w in SECRET_WORDS) else value
    _check_client_config(out)
    return out


def _api_version(value) -> tuple[int, ...]:
    parts = re.split(r"\s*[.,]\s*", value.strip().strip("[]()")) if isinstance(value, str) else value
    try:
        version = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        version = ()
    if not 2 <= len(version) <= 3:
        raise ValueError(f"kafka.client.api_version: expected a broker version such as [3, 7, 0] or \"3.7.0\", "
                         f"got {value!r}")
    return version


def _check_client_config(out: dict) -> None:
    """What kafka-python would refuse only once a client is built, after the broker check."""
    import kafka.codec

    codec = out.get("compression_type")
    if codec in _CODECS and not getattr(kafka.codec, _CODECS[codec][0])():
        raise ValueError(f"kafka.client.compression_type = {codec!r} needs the {_CODECS[codec][1]} package, "
                         "which is not installed: install it, or choose gzip")
    timeout, wait = out.get("request_timeout_ms", 305_000), out.get("fetch_max_wait_ms", 500)
    if timeout is not None and wait is not None and timeout <= wait:
        raise ValueError(f"kafka.client.request_timeout_ms ({timeout}) must be larger than "
                         f"kafka.client.fetch_max_wait_ms ({wait})")
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_crlfile"):
        path = out.get(key)
        path = path.get_secret_value() if isinstance(path, Secret) else path
        if path and not os.path.isfile(path):
            raise ValueError(f"kafka.client.{key}: no file at {path!r} (mount it, or correct the path)")


# how a true/false setting may be written in the environment or a --set, for every setting
BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _parse_scalar(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[text.strip().lower()]
        raise ValueError(f"kafka.client.{key}: expected true or false (or yes/no, on/off, 1/0), got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"kafka.client.{key}: expected {kind.__name__}, got {text!r}") from None
