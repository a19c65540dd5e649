"""``stream-ae broker``: the embedded Kafka-compatible broker with the service's topics, to try
``stream-ae serve`` on one machine without a Kafka cluster.

It starts the Tansu broker the demo and the tests use (``broker.py``; memory storage: nothing
outlives it), creates the topics the settings name -- the readings and the compacted state
topic with ``partitions`` partitions each, the alerts and dead-letter topics with one -- prints
the address and the ``serve`` command to run against it, and runs until SIGTERM or Ctrl-C.
A cluster of your own needs the same four topics, made with its own tools.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from stream_ae.errors import ConfigError


def topics_for(settings, partitions: int) -> tuple[dict[str, int], set[str]]:
    """The service's topics with their partition counts, and which are compacted.

    >>> from stream_ae.stream.settings import load_settings
    >>> topics_for(load_settings(env={}), 4)
    ({'readings': 4, 'stream-ae.state': 4, 'alerts': 1, 'readings.dead-letter': 1}, {'stream-ae.state'})
    """
    if partitions < 1:
        raise ConfigError(f"--partitions must be at least 1, got {partitions}")
    k = settings.kafka
    return ({k.readings_topic: partitions, k.state_topic: partitions, k.alerts_topic: 1, k.dead_letter_topic: 1},
            {k.state_topic})


def run_local_broker(config_path: str | None, overrides: Sequence[str], partitions: int, stop: threading.Event,
                     say: Callable[[str], None] = print) -> int:
    """Run the embedded broker with the settings' topics until ``stop`` is set; returns 0."""
    from stream_ae.stream.broker import create_topics, running_broker
    from stream_ae.stream.settings import load_settings

    settings = load_settings(config_path, overrides=overrides)
    topics, compact = topics_for(settings, partitions)
    logging.getLogger("kafka").setLevel(logging.WARNING)   # the admin client logs every connection at INFO
    with running_broker(prefer="embedded") as broker:
        create_topics(broker.bootstrap, topics, compact=compact)
        config = f" --config {config_path}" if config_path else ""
        say(f"embedded broker at {broker.bootstrap} (memory storage: it keeps nothing once stopped)\n"
            f"topics: " + ", ".join(f"{t} ({n} partition{'s' * (n > 1)}{', compacted' * (t in compact)})"
                                    for t, n in topics.items()) + "\n"
            f"run the detector against it:\n"
            f"  stream-ae serve{config} --set kafka.bootstrap_servers={broker.bootstrap}\n"
            f"Ctrl-C stops the broker")
        stop.wait()
    return 0


def run_until_stopped(config_path: str | None, overrides: Sequence[str], partitions: int) -> int:
    """:func:`run_local_broker` until SIGTERM or Ctrl-C (the command line's way to stop it)."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        return run_local_broker(config_path, overrides, partitions, stop)
    except KeyboardInterrupt:   # the broker is down once this is reached
        return 0
