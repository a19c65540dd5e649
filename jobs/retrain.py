"""``python -m jobs.retrain --config stream-ae.toml [--set section.key=value ...]``.

Trains a challenger on recent history, compares it with the deployment's champion on a
held-out recent span, promotes it only when the ``[retrain]`` rule holds, and writes a JSON
report and a plot to ``retrain.report_dir``. Meant for cron or a Kubernetes CronJob:

* ``--schedule``: run only when the last successful retrain is older than ``retrain.interval``
  (otherwise exit 0 at once);
* ``--if-drift``: like ``--schedule``, and also run early when a drift marker
  (``drift/<deployment>.json`` in the registry) is newer than the last retrain.

Exit status: 0 promoted, kept the champion, nothing due, or a retry of a finished run;
1 failure (bad data, training failed); 2 bad settings or flags; 3 conflict (another run
promoted meanwhile, or holds the lock for the same data).
"""
from __future__ import annotations

import argparse
import json
import sys

from stream_ae.errors import ConfigError, StreamAEError
from stream_ae.stream.logs import masked_text

PROG = "python -m jobs.retrain"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's flags (also used by ``stream-ae job retrain``)."""
    from stream_ae.stream.settings import add_settings_arguments

    add_settings_arguments(parser)
    parser.add_argument("--now", default=None, metavar="TIME",
                        help="end of the holdout span (ISO time; default: now, floored to retrain.align)")
    parser.add_argument("--schedule", action="store_true",
                        help="run only when the last successful retrain is older than retrain.interval")
    parser.add_argument("--if-drift", action="store_true",
                        help="as --schedule, and also run when a drift marker is newer than the last retrain")
    parser.add_argument("--progress", action="store_true", help="show a training progress bar")


def run(args, prog: str = PROG) -> int:
    """Run the job from parsed arguments; prints the report as one JSON line; returns the exit status."""
    from stream_ae.registry import PromotionConflict
    from stream_ae.retraining import RetrainBusy, run_retrain
    from stream_ae.stream.settings import settings_from_args

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"{prog}: error: {masked_text(exc)}", file=sys.stderr)
        return 2
    from stream_ae.stream.logs import configure_logging

    configure_logging(settings.ops, secrets=settings.secret_values())  # as the service: format, level, masking
    try:
        report = run_retrain(settings, now=args.now, schedule=args.schedule, if_drift=args.if_drift or None,
                             progress=args.progress)
    except (PromotionConflict, RetrainBusy) as exc:
        print(f"{prog}: conflict: {masked_text(exc)}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        print(f"{prog}: error: {masked_text(exc)}", file=sys.stderr)
        return 2
    except (StreamAEError, OSError) as exc:   # OSError: the registry or report_dir (not a folder, permissions)
        print(f"{prog}: error: {masked_text(exc)}", file=sys.stderr)
        return 1
    print(json.dumps({"decision": report.decision, "challenger": (report.challenger or {}).get("version"),
                      "champion": (report.champion or {}).get("version"), "reasons": report.reasons,
                      "report": report.report_path, "plot": report.plot_path}))
    return report.exit_code


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``prog``: how the job was invoked (``stream-ae job retrain`` names itself so)."""
    description = __doc__.split("\n\n")[1].replace("``", "").replace(" Meant for cron or a Kubernetes CronJob:",
                                                                        " Meant for cron or a Kubernetes CronJob.")
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return run(parser.parse_args(argv), prog)


if __name__ == "__main__":
    raise SystemExit(main())
