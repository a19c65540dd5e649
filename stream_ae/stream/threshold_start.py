"""The threshold every entity of a model starts from: the artifact's calibration, or the
settings' ``[threshold]`` overrides of it (then entities warm up).

Options of the other rule than the one that applies (``threshold.factor`` with an EVT model)
are ignored with a warning and keep the calibration: a hot reload may bring a model of the
other rule, and the settings cannot tell which rule each model has.
"""
from __future__ import annotations

import dataclasses
import logging

from stream_ae.stream.sections import THRESHOLD_OPTIONS
from stream_ae.thresholds import ThresholdSpec

log = logging.getLogger(__name__)


def calibrated_threshold(artifact, overrides: dict | None = None) -> tuple[ThresholdSpec, dict | None]:
    """(spec, state) every entity starts from: the artifact's calibration, unless settings
    override the rule, in which case the calibration no longer applies and entities warm up."""
    spec = ThresholdSpec.from_dict(artifact.threshold["spec"])
    state = artifact.threshold.get("state")
    kind = (overrides or {}).get("kind", spec.kind)   # another rule: its own defaults, not the artifact's unused values
    stray = [k for k in overrides or {} if k in THRESHOLD_OPTIONS["quantile" if kind == "evt" else "evt"]]
    if stray:   # a deployment whose models' rules differ: the options of the other rule change nothing
        log.warning("threshold.%s: not an option of model %s's %s rule, ignored", ", threshold.".join(stray),
                    artifact.version, kind)
        overrides = {k: v for k, v in overrides.items() if k not in stray}
    if overrides:
        new = dataclasses.replace(spec if kind == spec.kind else ThresholdSpec(kind=kind), **overrides)
        if new != spec:
            log.warning("threshold settings %s differ from model %s's calibration: every entity warms up",
                        overrides, artifact.version)
            spec, state = new, None
    return spec, state
