"""Evaluation on labelled benchmarks: point-wise and NAB metrics, SKAB protocols, figures."""
from stream_ae.evaluation.metrics import Confusion, NabTally, confusion, nab_score, nab_tally
from stream_ae.evaluation.skab import evaluate, load_skab, run_skab_cli

__all__ = ["Confusion", "NabTally", "confusion", "evaluate", "load_skab", "nab_score",
           "nab_tally", "run_skab_cli"]
