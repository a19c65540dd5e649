"""Adaptive thresholds over anomaly scores: causal, warm-up aware, exactly restorable."""

from stream_ae.thresholds.base import (
    Threshold, ThresholdSpec, build_threshold, threshold_from_dict, threshold_to_dict)
from stream_ae.thresholds.evt import EvtThreshold
from stream_ae.thresholds.quantile import QuantileThreshold

__all__ = ["Threshold", "ThresholdSpec", "EvtThreshold", "QuantileThreshold", "build_threshold",
           "threshold_to_dict", "threshold_from_dict"]
