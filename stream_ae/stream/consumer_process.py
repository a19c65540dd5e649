"""One stream consumer in a process of its own, until SIGTERM / SIGINT (the crash tests kill it).

``python -m stream_ae.stream.consumer_process --artifact PATH [--checkpoint-interval S]
[--set section.key=value ...]``; ``stream-ae serve`` adds the registry, the ops endpoints
and hot reload around the same :class:`~stream_ae.stream.runner.StreamRunner`.
"""
from __future__ import annotations

import logging
import signal
import threading

from stream_ae.stream.runner import StreamRunner


def main(argv: list[str] | None = None) -> int:
    """Run one consumer with the settings from ``--set`` and the environment; returns 0."""
    import argparse

    from stream_ae.artifact import load_artifact
    from stream_ae.stream.settings import add_settings_arguments, settings_from_args

    parser = argparse.ArgumentParser(prog="python -m stream_ae.stream.consumer_process")
    parser.add_argument("--artifact", required=True, help="model artifact directory")
    parser.add_argument("--checkpoint-interval", type=float, default=None,
                        help="seconds between checkpoints (default: kafka.checkpoint_interval_s)")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_from_args(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())  # only sets the flag: the loop finishes the batch
    runner = StreamRunner(settings, load_artifact(args.artifact), checkpoint_interval_s=args.checkpoint_interval)
    runner.run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
