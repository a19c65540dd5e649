"""Scorer.warm_up on the CPU: nothing to do there (the first calls cost what later ones do)."""
import numpy as np

from stream_ae.scoring import Scorer
from test_window_view import _artifact, _rows


def test_warm_up_on_the_cpu_scores_nothing_and_changes_nothing(monkeypatch):
    scorer = Scorer(_artifact("conv"), device="cpu")
    rows = _rows()
    starts = np.arange(0, 300, 3, dtype=np.int64)
    before = scorer.score_rows(rows, starts).score
    calls = []
    monkeypatch.setattr(scorer, "score_rows", lambda *a: calls.append(a))
    assert scorer.warm_up(2048) is scorer and calls == []
    monkeypatch.undo()
    np.testing.assert_array_equal(scorer.score_rows(rows, starts).score, before)
