"""Evaluation on labelled benchmarks: point-wise and NAB metrics, SKAB protocols, figures."""
from stream_ae.evaluation.metrics import Confusion, NabTally, confusion, nab_score, nab_tally
from stream_ae.evaluation.skab import evaluate, run_skab_cli
from stream_ae.evaluation.skab_data import load_skab

__all__ = ["Confusion", "NabTally", "confusion", "evaluate", "load_skab", "nab_score",
           "nab_tally", "run_skab_cli"]
