"""`models history` follows the pointer's links back, not the hosts' clocks.

An interrupted promotion leaves a history entry at the next sequence that the pointer never
followed; the next real promotion writes another entry at that sequence. Which of the two took
effect is what the pointer (and each entry's ``previous``) says. Their wall-clock stamps come
from different hosts and say nothing: a host whose clock runs ahead used to win.
"""

from __future__ import annotations

import pytest

import stream_ae.registry as registry_module
from stream_ae.registry import Registry
from test_registry import tiny_artifact
from test_registry_interrupted_promotion import Crash, interrupt_pointer_write


@pytest.fixture
def three(tmp_path):
    reg = Registry(tmp_path / "models")
    return reg, [reg.publish(tiny_artifact(seed)) for seed in range(3)]


def test_an_interrupted_promotion_from_a_host_whose_clock_runs_ahead_is_not_in_the_history(three, monkeypatch):
    reg, (v1, v2, v3) = three
    reg.promote("prod", v1, reason="first")
    real_now = registry_module._now
    monkeypatch.setattr(registry_module, "_now", lambda: "2099-01-01T00:00:00.000000Z")   # a clock far ahead
    interrupt_pointer_write(reg, monkeypatch)
    with pytest.raises(Crash):
        reg.promote("prod", v3, reason="interrupted")
    monkeypatch.setattr(registry_module, "_now", real_now)
    reg.promote("prod", v2, reason="took effect")
    history = reg.history("prod")
    assert [(h["sequence"], h["version"], h["reason"]) for h in history] == [(1, v1, "first"), (2, v2, "took effect")]
    assert history[-1] == reg.pointer("prod")
    reg.promote("prod", v3, reason="third")   # an entry below the pointer is found by the next one's `previous`
    assert [(h["version"], h["previous"]) for h in reg.history("prod")] == [(v1, None), (v2, v1), (v3, v2)]


def test_the_same_version_promoted_again_after_an_interruption_is_the_pointers_entry(three, monkeypatch):
    reg, (v1, v2, _) = three
    reg.promote("prod", v1)
    monkeypatch.setattr(registry_module, "_now", lambda: "2099-01-01T00:00:00.000000Z")
    interrupt_pointer_write(reg, monkeypatch)
    with pytest.raises(Crash):
        reg.promote("prod", v2, reason="interrupted")
    monkeypatch.undo()
    reg.promote("prod", v2, reason="retried")
    assert reg.history("prod")[-1] == reg.pointer("prod")
    assert reg.history("prod")[-1]["reason"] == "retried"


def test_the_same_version_interrupted_then_promoted_stays_right_once_a_later_promotion_follows(three, monkeypatch):
    reg, (v1, v2, v3) = three
    reg.promote("prod", v1, reason="first")
    real_now = registry_module._now
    monkeypatch.setattr(registry_module, "_now", lambda: "2099-01-01T00:00:00.000000Z")
    interrupt_pointer_write(reg, monkeypatch)
    with pytest.raises(Crash):
        reg.promote("prod", v2, reason="interrupted")
    monkeypatch.setattr(registry_module, "_now", real_now)
    reg.promote("prod", v2, reason="took effect")
    reg.promote("prod", v3, reason="third")   # sequence 2 is now found by v3's link, not the pointer itself
    assert [h["reason"] for h in reg.history("prod")] == ["first", "took effect", "third"]
