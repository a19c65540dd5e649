"""The model a stream runs: how it is built (:func:`stream_scorer`), when a runner asks for a new
one, and the one waiting to be swapped in (hot reload).

The runner swaps it in between batches, once what the old model scored is checkpointed
(:meth:`StreamRunner._maybe_reload`); this only builds, schedules and holds the models.
"""
from __future__ import annotations

import time
from typing import Any, Callable


def stream_scorer(artifact, settings):
    """A Scorer of ``artifact`` on ``settings.model.device`` and ``.precision``, warmed up to the
    largest micro-batch (``batch.max_size``): at start-up and for every hot reload alike."""
    from stream_ae.scoring import Scorer

    return Scorer(artifact, device=settings.model.device,
                  precision=settings.model.precision).warm_up(settings.batch.max_size)


class ModelSwap:
    """``reload() -> Scorer | None`` is asked every ``interval_s`` (never when 0 or None);
    :meth:`offer` hands a model over from any thread.

    >>> swap = ModelSwap(lambda: None, 0)
    >>> swap.waiting("v1") is None
    True
    >>> swap.offer(type("S", (), {"version": "v2"})())
    >>> swap.waiting("v1").version, swap.take().version, swap.waiting("v1")
    ('v2', 'v2', None)
    """

    def __init__(self, reload: Callable[[], Any] | None, interval_s: float):
        self.reload, self.interval_s = reload, interval_s
        self.next_s = time.monotonic() + interval_s
        self._waiting = None

    def offer(self, scorer) -> None:
        self._waiting = scorer

    def waiting(self, running_version: str):
        """The model to swap in, if any: one offered, or a new version ``reload`` returns when due."""
        if self.reload is not None and self.interval_s > 0 and time.monotonic() >= self.next_s:
            self.next_s = time.monotonic() + self.interval_s
            new = self.reload()
            if new is not None and new.version != running_version:
                self._waiting = new
        return self._waiting

    def take(self):
        scorer, self._waiting = self._waiting, None
        return scorer
