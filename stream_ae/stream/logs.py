"""Service logging: one JSON object per line (or plain text), secrets masked.

Extra fields given with ``log.info("...", extra={"fields": {...}})`` become keys of the JSON
line; a key that looks like a secret (password, secret, token, sasl, ssl key) is masked
whatever its value, so a careless ``extra`` cannot leak a credential. Settings are logged
through :meth:`Settings.redacted`, never as the object.

>>> import io, json, logging
>>> stream = io.StringIO()
>>> h = logging.StreamHandler(stream); h.setFormatter(JsonFormatter())
>>> log = logging.getLogger("doctest.logs"); log.addHandler(h); log.propagate = False
>>> log.warning("hello %s", "you", extra={"fields": {"sasl_plain_password": "hunter2", "n": 3}})
>>> line = json.loads(stream.getvalue())
>>> line["msg"], line["level"], line["n"], line["sasl_plain_password"]
('hello you', 'WARNING', 3, '**********')
"""
from __future__ import annotations

import datetime as dt
import logging
import sys

from stream_ae.jsontext import dumps
from stream_ae.stream.sections import _MASK, SECRET_WORDS

# the settings' secret words (what becomes a Secret), and more: logs mask any field that looks like one
_SECRET_WORDS = SECRET_WORDS + ("ssl_key", "credential")
_RESERVED = ("ts", "level", "logger", "msg", "exc")   # a JSON line's own keys
# the values of the settings' secrets (configure_logging): masked wherever they appear in a
# message, e.g. kafka-python's DEBUG line that prints a client's whole configuration
_SECRET_VALUES: tuple[str, ...] = ()


def _scrub(text: str, secrets: tuple[str, ...] | None = None) -> str:
    """``text`` with every secret value (default: the configured ones) masked.

    >>> _scrub("config: {'sasl_plain_password': 'hunter2'}", ("hunter2",))
    "config: {'sasl_plain_password': '**********'}"
    """
    for secret in _SECRET_VALUES if secrets is None else secrets:
        text = text.replace(secret, _MASK)
    return text


def masked_text(text) -> str:
    """What a user may see of ``text`` (an error printed or written to a report): the configured
    secrets (:func:`configure_logging`) and every URI's credentials masked."""
    from stream_ae.redaction import mask_uri

    return mask_uri(_scrub(str(text)))


def _mask(obj, key: str = ""):
    if any(w in key.lower() for w in _SECRET_WORDS) and obj not in (None, ""):
        return _MASK
    if isinstance(obj, dict):
        return {k: _mask(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mask(v) for v in obj]
    return obj


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...fields, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "msg": _scrub(record.getMessage())}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):   # a field named like a line's own key (a drift event's ts) is prefixed
            out.update({f"field_{k}" if k in _RESERVED else k: v for k, v in _mask(fields).items()})
        if record.exc_info:
            out["exc"] = _scrub(self.formatException(record.exc_info))
        return dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = _scrub(super().format(record))
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={dumps(v, default=str)}" for k, v in _mask(fields).items())
        return text


def configure_logging(ops, stream=None, secrets=()) -> None:
    """Route every logger to one handler on stderr, formatted per ``ops.log_format``.

    Replaces the root handlers (the CLI may have installed a basicConfig one). kafka-python
    logs at INFO on every connection: it is kept at WARNING unless the level is DEBUG.
    ``secrets`` (:meth:`Settings.secret_values`) are masked in every message.
    """
    global _SECRET_VALUES
    _SECRET_VALUES = tuple(sorted({str(v) for v in secrets if v}, key=len, reverse=True))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if ops.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(ops.log_level)
    logging.getLogger("kafka").setLevel("DEBUG" if ops.log_level == "DEBUG" else "WARNING")
