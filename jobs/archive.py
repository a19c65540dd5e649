"""``python -m jobs.archive --config stream-ae.toml [--set section.key=value ...]``.

Archives the readings topic into the Parquet history (``[archive]`` settings) until SIGTERM
or SIGINT, which only set a stop flag: the job then writes what it holds, commits and exits 0.
``--exit-when-idle SECONDS`` makes it a one-shot run for a scheduler. Errors in the settings
stop it with one line naming the key, and exit status 2; a failure while archiving exits 1.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from stream_ae.errors import StreamAEError
from stream_ae.stream.logs import masked_text


def build_parser(prog: str = "python -m jobs.archive") -> argparse.ArgumentParser:
    from stream_ae.stream.settings import add_settings_arguments

    parser = argparse.ArgumentParser(prog=prog,
                                     description="Archive the readings topic into the Parquet history.")
    add_settings_arguments(parser)
    parser.add_argument("--exit-when-idle", type=float, default=None, metavar="SECONDS",
                        help="stop once no reading arrived for this long (one-shot run)")
    parser.add_argument("--max-records", type=int, default=None, help="stop after this many records")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m jobs.archive") -> int:
    from kafka.errors import KafkaError

    from stream_ae.archiver.job import run_archiver
    from stream_ae.stream.settings import settings_from_args

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except StreamAEError as exc:
        parser.error(masked_text(exc))  # exits 2 with one line
    from stream_ae.stream.logs import configure_logging

    configure_logging(settings.ops, secrets=settings.secret_values())  # as the service: format, level, masking
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        report = run_archiver(settings, stop, max_records=args.max_records, idle_exit_s=args.exit_when_idle)
    except (StreamAEError, OSError) as exc:   # OSError: the archive root (disk full, permissions)
        print(f"{prog}: error: {masked_text(exc)}", file=sys.stderr)
        return 1
    except KafkaError as exc:   # no broker at the address, a refused login
        print(f"{prog}: error: Kafka at kafka.bootstrap_servers={settings.kafka.bootstrap_servers!r}: "
              f"{masked_text(exc)}; check the address, the network and kafka.client security settings", file=sys.stderr)
        return 1
    print(json.dumps({"consumed": report.consumed, "rows": report.rows, "files": report.files,
                      "flushes": report.flushes, "dead_letters": report.dead_letters}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
