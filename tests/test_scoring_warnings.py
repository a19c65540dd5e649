"""Tracing a scoring graph says nothing and leaves the process's warning filters alone.

A hot reload builds its scorer on a loader thread while the poll loop runs
(``serve.py``); ``warnings.catch_warnings`` around the trace saved the filter list on entry
and put it back on exit, dropping whatever another thread had set meanwhile.
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from stream_ae import scoring
from stream_ae.scoring import Scorer
from test_window_view import _artifact


@pytest.mark.parametrize("kind", ["conv", "lstm"])
def test_a_filter_set_while_a_graph_is_traced_is_kept(kind, monkeypatch):
    """Another thread's filter, added while the graph is frozen, is still there afterwards."""
    freeze = torch.jit.freeze

    def freeze_while_another_thread_sets_a_filter(*args, **kwargs):
        warnings.filterwarnings("error", message="stream-ae probe: set by another thread")
        return freeze(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "freeze", freeze_while_another_thread_sets_a_filter)
    with warnings.catch_warnings():  # this test's own filters, restored after it
        scoring._TRACES.clear()
        Scorer(_artifact(kind, seed=3), device="cpu")
        assert any(f[0] == "error" and f[1] is not None and f[1].pattern == "stream-ae probe: set by another thread"
                   for f in warnings.filters)


@pytest.mark.parametrize("kind", ["conv", "lstm"])
def test_tracing_says_nothing_and_other_warnings_still_show(kind):
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        scoring.quiet_torchscript()  # what importing scoring installed, above "always"
        scoring._TRACES.clear()
        Scorer(_artifact(kind, seed=4), device="cpu")
        traced = [str(w.message) for w in seen]
        warnings.warn("a deprecation of our own", DeprecationWarning)
        warnings.warn("a tracer warning from elsewhere", torch.jit.TracerWarning)
    assert traced == []
    assert [str(w.message) for w in seen[len(traced):]] == ["a deprecation of our own",
                                                           "a tracer warning from elsewhere"]


def test_a_user_sees_none_of_it_with_every_warning_shown():
    """Importing the package installs the filters: a fresh interpreter with ``-W always`` builds
    a conv and an LSTM scorer and prints no warning at all."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_window_view import _artifact; "
            "from stream_ae.scoring import Scorer; [Scorer(_artifact(k), device='cpu') for k in ('conv', 'lstm')]")
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
