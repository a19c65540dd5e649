"""A hot swap waits for a checkpoint of what the old model scored. Before, a crash within the
checkpoint interval after a swap replayed the old model's readings through the new one, which
need not open the alerts the old one had published: their `resolved` never came."""
from __future__ import annotations

from types import SimpleNamespace

from stream_ae.scoring import Scorer
from test_stream_bounds import runner_with_fakes
from test_stream_detector import make_artifact


def _runner_with_a_spied_checkpoint():
    runner = runner_with_fakes()
    real, seen = runner.checkpoint, []

    def spy(**kw):
        seen.append(runner.detector.model_version)  # the model in place when the checkpoint is taken
        return real(**kw)

    runner.checkpoint = spy
    return runner, seen


def test_the_swap_comes_after_a_checkpoint_taken_under_the_old_model():
    runner, seen = _runner_with_a_spied_checkpoint()
    old, new = runner.detector.model_version, Scorer(make_artifact(seed=1), device="cpu")
    try:
        runner.swap_scorer(new)
        runner._maybe_reload()
        assert seen == [old] and runner.detector.model_version == new.version
        runner._maybe_reload()  # nothing waiting: no more checkpoints
        assert seen == [old]
    finally:
        runner._checkpointer.close()


def test_without_a_checkpoint_the_new_model_waits():
    runner, seen = _runner_with_a_spied_checkpoint()
    old, new = runner.detector.model_version, Scorer(make_artifact(seed=1), device="cpu")
    fresh = {"now": False}  # a stall: no checkpoint before a poll confirms the membership
    runner.membership = SimpleNamespace(fresh=lambda: fresh["now"], confirm=lambda: True,
                                        commit=lambda *a, **k: None)
    try:
        runner.swap_scorer(new)
        runner._maybe_reload()
        assert runner.detector.model_version == old and seen == [old]
        fresh["now"] = True
        runner._maybe_reload()
        assert runner.detector.model_version == new.version and seen == [old, old]
    finally:
        runner._checkpointer.close()


def test_with_no_partition_assigned_the_swap_needs_no_checkpoint():
    runner, seen = _runner_with_a_spied_checkpoint()
    runner._assigned = set()
    new = Scorer(make_artifact(seed=1), device="cpu")
    try:
        runner.swap_scorer(new)
        runner._maybe_reload()
        assert runner.detector.model_version == new.version and seen == []
    finally:
        runner._checkpointer.close()
