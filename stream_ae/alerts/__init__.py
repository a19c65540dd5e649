"""Alert lifecycle over thresholded windows: policy, per-entity tracker, events."""

from stream_ae.alerts.policy import AlertPolicy
from stream_ae.alerts.events import AlertEvent, alert_id, iso_utc, top_channels
from stream_ae.alerts.tracker import AlertTracker

__all__ = ["AlertPolicy", "AlertTracker", "AlertEvent", "alert_id", "iso_utc", "top_channels"]
