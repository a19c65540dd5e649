"""``stream-ae serve``: settings → logging → HTTP endpoints → model → the runner, until SIGTERM.

Signal handlers only set a stop flag; the runner then finishes its batch, flushes the
alerts, checkpoints, commits and closes (see ``runner.py``). Exit status: 0 after a
graceful stop, non-zero after a failure (the CLI prints :class:`ConfigError` and other
project errors as one line; anything else is logged with its traceback and gives 1).

The model is ``model.artifact`` (a fixed artifact directory) or ``model.deployment`` in the
registry at ``model.registry``; with a deployment, :class:`ModelWatcher` follows the
deployment pointer and hands a newly promoted version to the runner between batches.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from typing import Callable, Sequence

from stream_ae.errors import ConfigError, StreamAEError
from stream_ae.redaction import mask_uri

log = logging.getLogger(__name__)


class ModelWatcher:
    """The runner's ``reload=`` hook: ``watcher() -> Scorer | None``.

    With ``model.deployment`` it reads the deployment pointer (one small file) on each call;
    when it names another version, the artifact is loaded and its Scorer built in a
    background thread, off the consume loop. The new Scorer is handed over through
    ``on_ready`` (e.g. ``runner.swap_scorer``) as soon as it is built, or else returned by the
    next call; no other load starts before that handover, so a slower load cannot land after
    a newer one. A version that fails to load, or whose channels or window length differ from
    the running model's, is logged and the running model stays; the same version is tried
    again after ``RETRY_S``, doubling up to ``RETRY_MAX_S`` (a download that timed out, an
    artifact still being copied), and at once when the pointer moves to another version.
    Each failed try counts in ``stream_ae_model_reload_failures_total``. With
    ``model.artifact`` nothing is watched and every call returns None.
    """

    RETRY_S, RETRY_MAX_S = 10.0, 600.0
    FIRST_CHECK_S = 5.0   # how often a deployment with no version yet is read (model.wait_for_model_s)

    def __init__(self, settings, on_ready: Callable[[object], None] | None = None):
        m = settings.model
        if not m.deployment and not m.artifact:
            raise ConfigError("no model: set model.deployment (a deployment in the registry at "
                              f"model.registry={mask_uri(m.registry)!r}) or model.artifact (an artifact directory)")
        self.settings = settings
        self.on_ready = on_ready
        self.deployment = m.deployment
        self.registry = None
        if m.deployment:
            from stream_ae.registry import Registry

            self.registry = Registry(m.registry)
        self.version: str | None = None
        self._shape: tuple | None = None
        self._ready = None
        self._loading: str | None = None
        self._failed: dict[str, tuple[float, float]] = {}  # version -> (retry at (monotonic), next wait)
        self._lock = threading.Lock()
        self.metrics = None  # StreamMetrics: failed tries are counted when set

    @property
    def watching(self) -> bool:
        return self.registry is not None

    def initial(self, stop: threading.Event | None = None, metrics=None):
        """The Scorer to start with (raises ConfigError / ArtifactError when there is none), after
        waiting up to ``model.wait_for_model_s`` for the deployment to name a version; None when
        ``stop`` is set while waiting."""
        from stream_ae.artifact import load_artifact, reload_shape

        if self.registry is None:
            scorer = self._scorer(load_artifact(self.settings.model.artifact))
        else:
            version = self._first_version(stop or threading.Event(), metrics)
            if version is None:
                return None
            scorer = self._scorer(load_artifact(self.registry.artifact_path(version)))
        self.version = scorer.version
        self._shape = reload_shape(scorer.artifact)
        return scorer

    def _first_version(self, stop: threading.Event, metrics) -> str | None:
        """The version the deployment names, checked every ``FIRST_CHECK_S`` for up to
        ``model.wait_for_model_s`` (a new deployment whose first model is still being trained);
        None if ``stop`` is set meanwhile. A registry that cannot be read while waiting is logged."""
        wait_s = self.settings.model.wait_for_model_s
        where = f"the registry at {mask_uri(self.settings.model.registry)!r}"
        version = self.registry.current(self.deployment)
        if version is None and wait_s > 0:
            log.warning("deployment %r has no version in %s yet: waiting %s for one to be promoted "
                        "(model.wait_for_model_s); /readyz answers 503 meanwhile", self.deployment, where,
                        "for good" if math.isinf(wait_s) else f"up to {wait_s:g} s")
            deadline = time.monotonic() + wait_s
            while version is None and not stop.is_set() and time.monotonic() < deadline:
                if metrics is not None:
                    metrics.waiting(True)
                if stop.wait(min(self.FIRST_CHECK_S, max(0.0, deadline - time.monotonic()))):
                    break
                try:
                    version = self.registry.current(self.deployment)
                except (OSError, StreamAEError) as exc:
                    log.warning("cannot read deployment %r while waiting for its first version: %s",
                                self.deployment, exc)
            if metrics is not None:
                metrics.waiting(False)
            if version is None and stop.is_set():
                log.info("stopped while waiting for deployment %r to name a version", self.deployment)
                return None
        if version is None:
            waited = f" after waiting {wait_s:g} s (model.wait_for_model_s)" if wait_s > 0 else \
                " (or set model.wait_for_model_s to wait for one)"
            if not self.registry.exists():
                where += ", a folder that does not exist (check model.registry)"
            raise ConfigError(f"deployment {self.deployment!r} has no version in {where}{waited}; "
                              "promote one first")
        return version

    def _scorer(self, artifact):
        from stream_ae.stream.model_swap import stream_scorer

        return stream_scorer(artifact, self.settings)

    def __call__(self):
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None or self.registry is None:
            return ready
        try:
            version = self.registry.current(self.deployment)
        except (OSError, StreamAEError) as exc:   # a registry hiccup must not stop the consumer
            log.warning("cannot read deployment %r: %s; keeping model %s", self.deployment, exc, self.version)
            return None
        if version is None or version == self.version or self._loading:
            return None
        if version in self._failed and time.monotonic() < self._failed[version][0]:
            return None
        self._loading = version
        threading.Thread(target=self._load, args=(version,), name=f"load-{version}", daemon=True).start()
        return None

    def _load(self, version: str) -> None:
        from stream_ae.artifact import load_artifact, reload_shape

        try:
            try:
                scorer = self._scorer(load_artifact(self.registry.artifact_path(version)))
                shape = reload_shape(scorer.artifact)
                if shape != self._shape:
                    raise ConfigError(f"model {version} has channels {list(shape[0])} and windows of {shape[1]}, "
                                      f"the running model {list(self._shape[0])} and {self._shape[1]}; "
                                      "a hot reload must keep both (restart the service to change them)")
            except (OSError, StreamAEError) as exc:
                self._refuse(version, exc)
                return
            except Exception as exc:  # noqa: BLE001 - CUDA out of memory, a trace failure: the running model stays
                log.exception("loading model %s raised an unexpected error", version)
                self._refuse(version, exc)
                return
            log.info("model %s loaded for deployment %r (was %s)", version, self.deployment, self.version)
            if self.on_ready is not None:
                self.on_ready(scorer)
            else:
                with self._lock:
                    self._ready = scorer
            self.version = version
            self._failed.clear()
        finally:
            self._loading = None   # only after the handover: a newer load cannot overtake this one

    def _refuse(self, version: str, exc: Exception) -> None:
        wait = self._failed.get(version, (0.0, self.RETRY_S))[1]
        self._failed = {version: (time.monotonic() + wait, min(2 * wait, self.RETRY_MAX_S))}
        if self.metrics is not None:
            self.metrics.reload_failures.inc()
        log.error("deployment %r now names %s but it cannot be used: %s; keeping model %s (tried again in "
                  "%.0f s, or when the deployment names another version)", self.deployment, version, exc,
                  self.version, wait)


def check_broker(settings, timeout_s: float = 10.0) -> None:
    """Fail fast, with a ConfigError a user can act on, when the cluster or the topics are missing.
    kafka-python's own lines while it tries the address (two dozen ERROR and WARNING lines for a
    broker that does not answer) are held back unless the log level is DEBUG: the error says it."""
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    if level > logging.DEBUG:
        kafka_log.setLevel(logging.CRITICAL)
    try:
        _check_broker(settings, timeout_s)
    finally:
        kafka_log.setLevel(level)


def _check_broker(settings, timeout_s: float) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError, KafkaError

    k = settings.kafka
    try:
        ms = int(timeout_s * 1000)
        admin = KafkaAdminClient(**{"request_timeout_ms": ms, "bootstrap_timeout_ms": ms,
                                    **settings.kafka_client_kwargs("admin")})
    except KafkaConfigurationError as exc:   # not the network's fault: a [kafka.client] value
        raise ConfigError(f"kafka-python refused the [kafka.client] settings: {exc}") from None
    except KafkaError as exc:
        raise ConfigError(f"no Kafka broker answers at kafka.bootstrap_servers={k.bootstrap_servers!r} "
                          f"({type(exc).__name__}); check the address, the network and kafka.client "
                          "security settings") from None
    except (ValueError, TypeError, AssertionError) as exc:   # kafka-python refused a [kafka.client] value
        raise ConfigError(f"kafka-python refused the [kafka.client] settings: {exc}") from None
    try:
        topics = set(admin.list_topics())
    except (KafkaError, ValueError, TypeError, AssertionError) as exc:   # e.g. a wrong kafka.client.api_version
        raise ConfigError(f"the broker at {k.bootstrap_servers!r} answered, but listing its topics failed "
                          f"({type(exc).__name__}: {exc}); check kafka.client (api_version, security "
                          "settings)") from None
    finally:
        admin.close()
    missing = [t for t in (k.readings_topic, k.state_topic) if t not in topics]
    if missing:
        raise ConfigError(f"topics {missing} do not exist on {k.bootstrap_servers}; create the readings topic, "
                          f"and the state topic {k.state_topic!r} with as many partitions and "
                          "cleanup.policy=compact (kafka.readings_topic / kafka.state_topic)")
    for t in (k.alerts_topic, k.dead_letter_topic):
        if t not in topics:
            log.warning("topic %r does not exist yet: the broker must auto-create it", t)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, signals=(signal.SIGTERM, signal.SIGINT)):
    """Handlers that only set ``stop``; the previous handlers come back on exit (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        log.info("received %s: stopping after the current batch (a second signal stops at once, without "
                 "a commit: a restart replays from the last checkpoint)", signal.Signals(signum).name)
        stop.set()
        for s in signals:   # a stop that hangs (a broker gone: the final checkpoint waits on it)
            signal.signal(s, signal.SIG_DFL)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _log_format_anyway(config_path, overrides):
    """The ``[ops]`` logging of settings that failed to load, as far as it can be read (a flag, the
    environment, the TOML file, else the defaults): the reason then reaches a JSON log pipeline."""
    import os
    import tomllib

    from stream_ae.stream.sections import OpsSettings
    from stream_ae.stream.settings import CONFIG_ENV, ENV_PREFIX

    wanted = {}
    try:
        with open(config_path or os.environ.get(CONFIG_ENV) or os.devnull, "rb") as f:
            wanted.update(tomllib.load(f).get("ops", {}))
    except (OSError, ValueError, AttributeError, TypeError):   # no file, not TOML, [ops] not a table
        pass
    for key in ("log_format", "log_level"):
        wanted[key] = os.environ.get(f"{ENV_PREFIX}OPS__{key.upper()}", wanted.get(key))
        for item in overrides:
            name, _, value = item.partition("=")
            wanted[key] = value.strip() if name.strip() == f"ops.{key}" else wanted[key]
    fmt, level = str(wanted.get("log_format")).lower(), str(wanted.get("log_level")).upper()
    return OpsSettings(log_format=fmt if fmt in ("json", "text") else "json",
                       log_level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")


def _cannot_start(exc: StreamAEError) -> None:
    """Why the service cannot start, as a log line too (a JSON log pipeline drops the CLI's plain one)."""
    log.error("stream-ae serve cannot start: %s", mask_uri(str(exc)), extra={"fields": {"error": type(exc).__name__}})


def serve(config_path: str | None = None, overrides: Sequence[str] = (), *,
          stop: threading.Event | None = None) -> int:
    """Run the streaming detector until SIGTERM / SIGINT (or ``stop``); returns the exit status."""
    from stream_ae.stream.logs import configure_logging
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.ops import OpsServer
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.settings import load_settings

    try:
        settings = load_settings(config_path, overrides=overrides)
    except ConfigError as exc:   # a log line too, in the format the settings would have chosen
        configure_logging(_log_format_anyway(config_path, overrides))
        _cannot_start(exc)
        raise
    configure_logging(settings.ops, secrets=settings.secret_values())
    log.info("stream-ae serve starting", extra={"fields": {"settings": settings.redacted()}})
    stop = stop or threading.Event()
    metrics = StreamMetrics()
    ops = settings.ops
    stale = max(60.0, 3 * settings.kafka.session_timeout_ms / 1000)
    with stop_on_signals(stop), contextlib.ExitStack() as stack:
        try:
            watcher = ModelWatcher(settings)
            stack.enter_context(OpsServer(metrics, ops.metrics_port, ops.health_port, stale_after_s=stale))
            check_broker(settings)
            scorer = watcher.initial(stop, metrics)   # answers /healthz while it waits for a first model
        except StreamAEError as exc:
            _cannot_start(exc)
            raise
        if scorer is None:
            return 0   # stopped while waiting for a first model
        log.info("model %s on %s", scorer.version, scorer.device,
                 extra={"fields": {"deployment": settings.model.deployment, "model_version": scorer.version}})
        runner = StreamRunner(settings, scorer, reload=watcher if watcher.watching else None, metrics=metrics)
        watcher.on_ready, watcher.metrics = runner.swap_scorer, metrics
        try:
            runner.run(stop)
        except StreamAEError:
            log.exception("stream-ae serve failed; offsets were not committed after the last checkpoint")
            raise
        except Exception:   # not ours: log with the traceback, exit non-zero
            log.exception("stream-ae serve failed; offsets were not committed after the last checkpoint")
            return 1
    log.info("stream-ae serve stopped gracefully",
             extra={"fields": {"consumed": metrics.sample("stream_ae_messages_consumed_total"),
                               "model_version": metrics.model_version}})
    return 0
