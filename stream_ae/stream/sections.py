"""The sections of the service settings: one frozen msgspec Struct each, validated on build.

:mod:`stream_ae.stream.settings` assembles them into :class:`Settings` and loads them from
file, environment and flags. Passwords and tokens are :class:`Secret`: masked in ``repr``.
The kafka-python passthrough (``[kafka.client]``) is checked in
:mod:`stream_ae.stream.client_settings`.
"""
from __future__ import annotations

import math
import re
import types
from typing import Annotated, Any, Literal, Mapping

import msgspec
from msgspec import Meta

from stream_ae.configs import PRECISIONS
from stream_ae.redaction import MASK

_MASK = MASK
# a key holding one of these is masked; a proxy URL may carry user:password@
SECRET_WORDS = ("password", "secret", "token", "proxy")


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
Text = Annotated[str, Meta(min_length=1)]   # a name or address: an empty one (STREAM_AE_X='') is an error


class KafkaSettings(_Section):
    bootstrap_servers: Text = "localhost:9092"
    group_id: Text = "stream-ae"
    session_timeout_ms: Annotated[int, Meta(ge=1000, le=3_600_000)] = 10_000
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    readings_topic: Text = "readings"
    alerts_topic: Text = "alerts"
    dead_letter_topic: Text = "readings.dead-letter"
    state_topic: Text = "stream-ae.state"
    # seconds between checkpoints (state + offsets); a crash replays at most this much
    checkpoint_interval_s: Annotated[float, Meta(ge=0.1, le=3600.0)] = 5.0
    # who decodes the records of each fetched batch: "compiled" (aiokafka's C decoder, the same
    # ConsumerRecords at ~1/5 of the CPU; stream/record_decoding.py) or kafka-python (in Python)
    record_decoder: Literal["compiled", "kafka-python"] = "compiled"
    client: Mapping[str, Any] = msgspec.field(default_factory=dict)  # kafka-python passthrough

    def topics(self) -> dict[str, str]:
        """Each topic setting's name and value: ``{"readings_topic": "readings", ...}``."""
        return {"readings_topic": self.readings_topic, "alerts_topic": self.alerts_topic,
                "dead_letter_topic": self.dead_letter_topic, "state_topic": self.state_topic}

    def __post_init__(self):
        from stream_ae.stream.client_settings import client_config

        msgspec.structs.force_setattr(self, "client", types.MappingProxyType(client_config(self.client)))
        topics = self.topics()
        for name, topic in topics.items():
            same = [other for other, t in topics.items() if t == topic and other != name]
            if same:
                raise ValueError(f"kafka.{name} and kafka.{same[0]} are both {topic!r}; each needs a topic "
                                 "of its own")
        beat = self.client.get("heartbeat_interval_ms")
        if beat is not None and beat >= self.session_timeout_ms:
            raise ValueError(f"kafka.client.heartbeat_interval_ms ({beat}) must be below kafka.session_timeout_ms "
                             f"({self.session_timeout_ms}); a third of it is usual")


class ModelSettings(_Section):
    registry: Text = "models"               # directory or URI of the model registry
    deployment: str | None = None          # name of a deployment in the registry, or ...
    artifact: str | None = None            # ... a path to one artifact version
    device: str = "auto"
    # fp32, or bf16 (CUDA, or a CPU with native bf16: ~1.5x faster there) / fp16 (CUDA)
    precision: Literal[PRECISIONS] = "fp32"
    reload_interval_s: Annotated[float, Meta(ge=0.0)] = 60.0   # 0: never look for a new version
    # at start, wait this long for model.deployment to name a version (0: fail at once; inf: for good)
    wait_for_model_s: Annotated[float, Meta(ge=0.0)] = 0.0

    def __post_init__(self):
        if self.deployment and self.artifact:
            raise ValueError("set model.deployment or model.artifact, not both")


class BatchSettings(_Section):
    max_size: Annotated[int, Meta(ge=1)] = 1024
    max_wait_ms: Annotated[int, Meta(ge=0)] = 100  # waited only while every scoring thread is busy
    torch_threads: Annotated[int, Meta(ge=0)] = 1  # model threads; 0 keeps torch's default (all cores)
    # micro-batches scored at once, each on its own thread (with torch_threads each)
    scoring_threads: Annotated[int, Meta(ge=1, le=16)] = 2


THRESHOLD_OPTIONS = {"evt": ("q", "level"), "quantile": ("quantile", "factor")}   # each rule's own [threshold] keys


class ThresholdSettings(_Section):
    """Overrides of the artifact's calibrated threshold; ``None`` keeps the artifact's value."""

    kind: Literal["evt", "quantile"] | None = None
    q: Prob | None = None
    level: Prob | None = None
    quantile: Prob | None = None
    factor: Annotated[float, Meta(gt=0.0)] | None = None
    warmup: Annotated[int, Meta(ge=10)] | None = None   # a tail fit needs 10 scores (and DSPOT's depth more)

    def __post_init__(self):
        given = [k for k in THRESHOLD_OPTIONS["evt"] + THRESHOLD_OPTIONS["quantile"] if getattr(self, k) is not None]
        for kind, other in (("evt", "quantile"), ("quantile", "evt")):
            mine = [k for k in given if k in THRESHOLD_OPTIONS[kind]]
            theirs = [k for k in given if k in THRESHOLD_OPTIONS[other]]
            if mine and (theirs or self.kind == other):
                raise ValueError(f"threshold.{mine[0]} is an option of the {kind} rule, which "
                                 + (f"threshold.{theirs[0]} is not" if theirs else "threshold.kind is not")
                                 + ": set the options of one rule")
        if self.factor is not None and not (1.0 < self.factor < math.inf):
            raise ValueError(f"threshold.factor must be a number above 1, got {self.factor}: flagged windows are "
                             "never learned, so at factor <= 1 the threshold keeps falling")
        if self.q is not None and self.level is not None and self.q >= 1.0 - self.level:
            raise ValueError(f"threshold.q ({self.q}) must be smaller than 1 - threshold.level "
                             f"({1.0 - self.level:g}): the anomaly quantile has to lie inside the fitted tail")


class AlertSettings(_Section):
    k: Annotated[int, Meta(ge=1)] = 3                  # open after k flagged windows ...
    n: Annotated[int, Meta(ge=1)] = 5                  # ... among the last n
    update_interval_s: Annotated[float, Meta(ge=0.0)] = 60.0
    quiet_s: Annotated[float, Meta(gt=0.0)] = 300.0    # resolve after this long unflagged
    silence_s: Annotated[float, Meta(ge=0.0)] | None = None  # ... or silent (None: 5 x quiet_s; 0: never)

    def __post_init__(self):
        for key in ("update_interval_s", "quiet_s", "silence_s"):
            if getattr(self, key) is not None and not math.isfinite(getattr(self, key)):
                raise ValueError(f"alerts.{key} must be a finite number of seconds, got {getattr(self, key)}")
        if self.k > self.n:
            raise ValueError(f"alerts.k ({self.k}) must not exceed alerts.n ({self.n})")
        if self.silence_s and self.silence_s < self.quiet_s:
            raise ValueError(f"alerts.silence_s ({self.silence_s}) must be 0 (never) or at least "
                             f"alerts.quiet_s ({self.quiet_s})")


class InputSettings(_Section):
    max_message_bytes: Annotated[int, Meta(ge=64)] = 65_536
    unknown_fields: Literal["reject", "ignore"] = "reject"
    late_policy: Literal["dead_letter", "drop"] = "dead_letter"   # late/out_of_order/duplicate
    max_entities: Annotated[int, Meta(ge=1)] = 100_000
    # a reading stamped further ahead of this host's clock is malformed (0: no limit): accepted,
    # it would make every later reading of its entity out_of_order until wall time caught up
    max_future_s: Annotated[float, Meta(ge=0.0)] = 86_400.0

    def __post_init__(self):
        if not math.isfinite(self.max_future_s):
            raise ValueError(f"input.max_future_s must be a finite number of seconds (0: no limit), "
                             f"got {self.max_future_s}")

    def future_limit_s(self) -> float | None:
        """``max_future_s`` as ``ReadingDecoder`` takes it: None for no limit (0)."""
        return self.max_future_s or None


class DriftSettings(_Section):
    """The stream's drift watch (``stream_ae.stream.drift_watch``): the level of normal windows'
    log scores over a horizon of event time, against the model's starting level."""

    enabled: bool = True
    # an event when the mean log score over the horizon leaves the model's starting level by
    # this much (0.2: scores ~22 % higher or ~18 % lower)
    min_shift: Annotated[float, Meta(gt=0.0)] = 0.2
    horizon: str = "1d"              # event time the level is the mean over: at least the plant's rhythm
    sample_per_batch: Annotated[int, Meta(ge=1)] = 64    # scores fed per micro-batch (evenly spaced)
    # an event ("flagged") when at least this share of a horizon's windows were flagged: a threshold
    # learns no window it flags, so a new operating point is flagged for ever and never moves the level
    max_flagged: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.5

    def __post_init__(self):
        if parse_duration(self.horizon, "drift.horizon") <= 0:
            raise ValueError("drift.horizon must be longer than 0 s, e.g. \"1d\"")


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
    fault_tolerance: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.1   # per channel, share of synthetic faults flagged
    labels: str | None = None                # Parquet/CSV of labelled events or operator feedback
    report_dir: Text = "retrain-reports"
    lock_timeout_s: Annotated[float, Meta(ge=0.0)] = 3600.0       # wait this long for a run training the same data
    min_holdout_windows: Annotated[int, Meta(ge=1)] = 100
    min_train_coverage: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5  # share of train_span with readings
    device: str = "auto"
    seed: int = 0
    epochs: Annotated[int, Meta(ge=1)] | None = None              # None: the preset's
    max_windows: Annotated[int, Meta(ge=1)] | None = None
    window: Annotated[int, Meta(ge=2)] | None = None
    detrend: tuple[str, ...] | str = ()           # channels whose per-window trend the model ignores (train --detrend); "a,b" from --set
    score_steps: Annotated[int, Meta(ge=0)] | None = None         # None: the preset's (train --score-steps)
    # the variant's options (stream_ae/variant_options.py; train --noise-std ...); None: the model's default
    noise_std: Annotated[float, Meta(ge=0.0)] | None = None                   # denoising
    sparsity: Literal["l1", "kl"] | None = None                              # sparse
    sparsity_weight: Annotated[float, Meta(ge=0.0)] | None = None             # sparse
    sparsity_target: Prob | None = None                                      # sparse, with sparsity = "kl"
    contractive_weight: Annotated[float, Meta(ge=0.0)] | None = None          # contractive
    kl_weight: Annotated[float, Meta(ge=0.0)] | None = None                   # variational

    def variant_options(self) -> dict[str, Any]:
        """The variant options set here, checked to be read by ``variant`` (ConfigError naming the key)."""
        from stream_ae.variant_options import OPTIONS, given

        return given(self.variant, {k: getattr(self, k) for k in OPTIONS}, spell=lambda k: f"retrain.{k}")

    def __post_init__(self):
        self.variant_options()   # a mistake is said when the settings load, not at the next retrain
        if isinstance(self.detrend, str):
            msgspec.structs.force_setattr(self, "detrend", tuple(n.strip() for n in self.detrend.split(",") if n.strip()))
        for key in ("train_span", "holdout_span", "align", "interval"):
            seconds = parse_duration(getattr(self, key), f"retrain.{key}")
            if seconds <= 0 and key != "interval":
                raise ValueError(f"retrain.{key} must be longer than 0")


class ArchiveSettings(_Section):
    """The archiver job (``python -m jobs.archive``): readings topic -> Parquet history."""

    root: Text = "archive"                          # directory or URI of the Parquet history
    group_id: Text = "stream-ae-archiver"           # its own consumer group, not the detector's
    # its own dead-letter topic: the detector dead-letters the same bad readings to kafka.dead_letter_topic
    dead_letter_topic: Text = "readings.archive-dead-letter"
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


# ---- loading ---------------------------------------------------------------------------
