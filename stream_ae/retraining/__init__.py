"""Scheduled retraining: a challenger trained on recent history against the serving champion.

``run_retrain(settings, now=None, ...) -> RetrainReport`` trains, compares on a held-out span
through the one scoring path, promotes by :class:`PromotionRule`, and writes a JSON report
and a plot. ``python -m jobs.retrain`` is its command line.
"""
from stream_ae.retraining.compare import Decision, LabelledEvent, ModelMetrics, PromotionRule, decide
from stream_ae.retraining.job import RetrainBusy, is_due, run_retrain
from stream_ae.retraining.report import RetrainReport

__all__ = ["Decision", "LabelledEvent", "ModelMetrics", "PromotionRule", "RetrainBusy", "RetrainReport",
           "decide", "is_due", "run_retrain"]
