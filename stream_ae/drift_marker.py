"""The drift watch's edge: the marker file that makes the retrain job run early.

A drift event (:class:`~stream_ae.drift.DriftEvent`) of a deployment's running model is written
to ``drift/<deployment>.json`` in the registry root; ``jobs.retrain --schedule --if-drift`` runs
when it is newer than the last retrain. :mod:`stream_ae.drift` judges, this module writes.
"""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream_ae.drift import DriftEvent


def drift_marker_path(deployment: str) -> str:
    """Path of a deployment's drift marker, relative to the registry root."""
    return f"drift/{deployment}.json"


def report_drift(registry_root, deployment: str, event: DriftEvent | dict | None = None,
                 at: dt.datetime | None = None) -> dict:
    """Write ``drift/<deployment>.json`` in the registry root: the retrain job runs early when it
    is newer than the last retrain (``jobs.retrain --schedule --if-drift``). Replaced whole.

    Returns the marker record (``deployment``, ``reported_at`` ISO UTC, ``event``).
    """
    from stream_ae.drift import DriftEvent
    from stream_ae.registry import Registry
    from stream_ae.retraining.job import write_json

    at = at or dt.datetime.now(dt.timezone.utc)
    if isinstance(event, DriftEvent):
        event = event.to_dict()
    record = {"deployment": deployment, "reported_at": at.astimezone(dt.timezone.utc).isoformat(),
              "event": event}
    registry = Registry(registry_root)
    registry._pointer_path(deployment)   # validates the name the same way as deployments
    write_json(registry, drift_marker_path(deployment), record)
    return record

