"""The service's HTTP side: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (ready).

Stdlib ``http.server`` in a daemon thread per port; nothing else. The runner is never
called from here: the handlers only read :class:`~stream_ae.stream.metrics.StreamMetrics`.

* ``/healthz``: 200 while the consume loop is alive, i.e. it polled within ``stale_after_s``;
  before its first poll, while the service started (or, waiting for a first model, last
  checked the registry) less than ``START_GRACE_S`` (5 min) ago: checking the broker,
  downloading and warming up the model. 503 otherwise, so an orchestrator restarts a wedged
  process.
* ``/readyz``: 200 when the runner runs, a model is loaded and partitions are assigned; 503
  otherwise (e.g. while joining the group, or a spare member of a group with fewer partitions
  than members).

Both answer JSON: ``{"status": ..., **StreamMetrics.health()}``. A port of 0 disables that
endpoint group; equal ports share one server.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stream_ae.jsontext import dumps

log = logging.getLogger(__name__)


START_GRACE_S = 300.0   # before the first poll: the broker check, a model's download and warm-up


def liveness(metrics, started_at: float, stale_after_s: float) -> tuple[bool, dict]:
    """(alive, body) from the runner's last poll; before the first, from the start (or the last
    check for a first model) within ``START_GRACE_S`` or ``stale_after_s``, the longer."""
    health = metrics.health()
    if metrics.last_poll:
        last, limit = metrics.last_poll, stale_after_s
    else:
        last, limit = max(metrics.waited_at, started_at), max(stale_after_s, START_GRACE_S)
    alive = time.time() - last <= limit
    return alive, {"status": "alive" if alive else "stalled", "stale_after_s": stale_after_s, **health}


def readiness(metrics) -> tuple[bool, dict]:
    """(ready, body): running, model loaded, partitions assigned, and the group heartbeat sent
    within the session timeout (a broker gone leaves the loop polling nothing, fast)."""
    health = metrics.health()
    ready = bool(health["running"] and health["model_version"] and health["assigned_partitions"]
                 and health["broker_reachable"])
    status = "ready" if ready else "broker unreachable" if not health["broker_reachable"] else \
        "waiting for a model" if health["waiting_for_model"] else "not ready"
    return ready, {"status": status, **health}


class OpsServer:
    """HTTP endpoints for one runner's metrics.

    Parameters
    ----------
    metrics : StreamMetrics
    metrics_port, health_port : int
        0 disables; equal ports share one server.
    host : str
        Bind address; all interfaces by default (probes come from outside the pod).
    stale_after_s : float
        ``/healthz`` fails when the loop has not polled for this long.
    """

    def __init__(self, metrics, metrics_port: int, health_port: int, host: str = "0.0.0.0",
                 stale_after_s: float = 60.0):
        self.metrics = metrics
        self.host = host
        self.stale_after_s = float(stale_after_s)
        self.started_at = time.time()
        routes: dict[int, set[str]] = {}
        if metrics_port:
            routes.setdefault(metrics_port, set()).add("/metrics")
        if health_port:
            routes.setdefault(health_port, set()).update({"/healthz", "/readyz"})
        self._routes = routes
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    @property
    def ports(self) -> list[int]:
        """Bound ports (after :meth:`start`), in start order."""
        return [s.server_address[1] for s in self._servers]

    def start(self) -> "OpsServer":
        for port, paths in self._routes.items():
            try:
                server = _QuietServer((self.host, port), _handler(self, frozenset(paths)))
            except OSError as exc:
                self.stop()
                from stream_ae.errors import ConfigError

                raise ConfigError(f"cannot serve {sorted(paths)} on {self.host}:{port}: {exc.strerror}; "
                                  "set ops.metrics_port / ops.health_port to a free port, or 0 to disable") from None
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                      name=f"ops-http-{port}", daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
            log.info("serving %s on %s:%d", " ".join(sorted(paths)), self.host, port)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> "OpsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a path; used by the handler and by tests."""
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/healthz":
            ok, body = liveness(self.metrics, self.started_at, self.stale_after_s)
        elif path == "/readyz":
            ok, body = readiness(self.metrics)
        else:
            return 404, "application/json", b'{"status": "not found"}'
        return (200 if ok else 503), "application/json", dumps(body).encode()


class _QuietServer(ThreadingHTTPServer):
    """A client that drops its connection (a port scan, a load balancer's check) is a DEBUG line
    through the service's logs, not a plain-text traceback on stderr among the JSON lines."""

    def handle_error(self, request, client_address) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("ops client %s: %s", client_address, exc)
        else:
            log.warning("ops request from %s failed", client_address, exc_info=True)


def _handler(server: OpsServer, paths: frozenset):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server name
            path = self.path.split("?", 1)[0]
            status, kind, body = server.respond(path) if path in paths else \
                (404, "application/json", json.dumps({"status": "not found", "paths": sorted(paths)}).encode())
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # probes every few seconds: keep them out of INFO
            log.debug("%s %s", self.address_string(), fmt % args)

    return Handler
