"""A restart onto a model whose channels are reordered, or whose window length differs: the
restored entity states go on correctly (no torch, no broker: a recording stand-in scorer)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from stream_ae.alerts import AlertPolicy
from stream_ae.data.windows import WindowSpec
from stream_ae.scoring import ScoreBatch
from stream_ae.stream.checkpoint import decode_state
from stream_ae.stream.detector import Detector
from stream_ae.stream.detector_io import ReadingBatch
from stream_ae.thresholds import ThresholdSpec

S = 1_000_000_000
T0 = 1_700_000_000 * S


class Recorder:
    """Scores a window by its mean square and keeps every window it was given."""

    def __init__(self, channels, length, version="v1"):
        self.channels, self.length, self.version = tuple(channels), length, version
        self.artifact = SimpleNamespace(version=version, threshold=None)
        self.seen = []

    def score_rows(self, rows, starts):
        windows = np.stack([rows[s:s + self.length] for s in starts]) if len(starts) else \
            np.zeros((0, self.length, len(self.channels)), np.float32)
        self.seen.extend(windows.tolist())
        errors = (windows.astype(np.float64) ** 2).mean(axis=1)
        return ScoreBatch(errors.mean(axis=1).astype(np.float32), errors.astype(np.float32))


def detector(channels, length=8):
    spec = ThresholdSpec(kind="quantile", quantile=0.99, warmup=10_000)
    scorer = Recorder(channels, length)
    return Detector(scorer, spec, None, AlertPolicy(k=2, n=4, quiet_s=20), WindowSpec(length=length)), scorer


def feed(det, ts, values, offset0=0):
    n = len(ts)
    return det.process(ReadingBatch.from_arrays(["pump"] * n, ts, values, np.zeros(n, np.int64),
                                                np.arange(offset0, offset0 + n)))


def snapshots(det):
    return {e: decode_state(record) for e, (_, record) in det.table.take_dirty().items()}


def plant(n):
    rng = np.random.default_rng(3)
    return T0 + np.arange(n) * S, np.column_stack([rng.normal(0, 1, n), 10 + rng.normal(0, 1, n)]).astype(np.float32)


def test_a_restart_onto_reordered_channels_windows_as_an_uninterrupted_run_in_the_new_order():
    ts, ab = plant(60)
    old, _ = detector(("a", "b"))
    feed(old, ts[:40], ab[:40])
    saved = snapshots(old)

    new, seen = detector(("b", "a"))
    for entity, snapshot in saved.items():
        new.restore(entity, snapshot)
    feed(new, ts[40:], ab[40:, ::-1].copy(), offset0=40)          # the new model decodes b, a

    whole, seen_whole = detector(("b", "a"))
    feed(whole, ts, ab[:, ::-1].copy())
    assert len(seen.seen) == 20 and seen.seen == seen_whole.seen[-20:]   # as one run in the new order


def test_a_restart_onto_another_window_length_refuses_a_backlog_of_late_readings():
    ts, ab = plant(40)
    old, _ = detector(("a", "b"), length=8)
    feed(old, ts, ab)
    saved = snapshots(old)

    new, seen = detector(("a", "b"), length=10)
    for entity, snapshot in saved.items():
        new.restore(entity, snapshot)
    late = feed(new, ts[:12] + S // 2, ab[:12], offset0=40)          # a gateway re-sending old readings
    assert late.windows_scored == 0 and [r for _, r in late.rejected] == ["out_of_order"] * 12
    later = T0 + np.arange(40, 60) * S
    out = feed(new, later, ab[:20], offset0=52)                      # windows start over after the last
    assert out.windows_scored == 20 - 9 and len(seen.seen) == 11


def test_a_restart_onto_other_channels_starts_the_windows_over():
    ts, ab = plant(40)
    old, _ = detector(("a", "b"))
    feed(old, ts, ab)
    saved = snapshots(old)
    new, _ = detector(("a", "c"))
    for entity, snapshot in saved.items():
        new.restore(entity, snapshot)
    out = feed(new, T0 + np.arange(40, 50) * S, ab[:10], offset0=40)
    assert out.windows_scored == 10 - 7                              # the old rows of b are not c's
