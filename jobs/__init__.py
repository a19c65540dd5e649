"""Scheduled and long-running jobs around the detector (``python -m jobs.<name>``)."""
