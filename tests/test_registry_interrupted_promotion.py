"""A promotion interrupted between its history entry and its pointer did not happen.

`_swap` writes the history entry first, then the pointer. A crash (or a lost connection to an
object store) between the two must not leave a promotion in the history that no consumer ever
followed, nor make the next promotion's entry look like a second one of the same sequence.
"""

from __future__ import annotations

import pytest

from stream_ae.registry import Registry
from test_registry_guards import registry  # noqa: F401  (fixture)


class Crash(RuntimeError):
    pass


def interrupt_pointer_write(reg: Registry, monkeypatch) -> None:
    """The next pointer write raises, after its history entry is written."""
    write = reg._write_json

    def failing(path, obj, *, replace):
        if replace:
            monkeypatch.setattr(reg, "_write_json", write)
            raise Crash("process killed before the pointer was written")
        return write(path, obj, replace=replace)

    monkeypatch.setattr(reg, "_write_json", failing)


def test_an_interrupted_promotion_is_not_in_the_history(registry, monkeypatch):  # noqa: F811
    reg, (v1, v2) = registry
    reg.promote("prod", v1)
    interrupt_pointer_write(reg, monkeypatch)
    with pytest.raises(Crash):
        reg.promote("prod", v2, reason="interrupted")
    assert reg.current("prod") == v1
    assert [(h["version"], h["reason"]) for h in reg.history("prod")] == [(v1, "")]


def test_the_next_promotion_replaces_the_interrupted_ones_entry(registry, monkeypatch):  # noqa: F811
    reg, (v1, v2) = registry
    interrupt_pointer_write(reg, monkeypatch)
    with pytest.raises(Crash):
        reg.promote("prod", v2, reason="interrupted")
    assert reg.current("prod") is None and reg.history("prod") == []
    reg.promote("prod", v1, reason="first real")
    reg.promote("prod", v2, reason="second real")
    history = reg.history("prod")
    assert [(h["sequence"], h["version"], h["reason"]) for h in history] == \
        [(1, v1, "first real"), (2, v2, "second real")]
    assert history[-1] == reg.pointer("prod")
    assert reg.rollback("prod")["version"] == v1


def test_an_interrupted_rollback_is_not_in_the_history(registry, monkeypatch):  # noqa: F811
    reg, (v1, v2) = registry
    reg.promote("prod", v1)
    reg.promote("prod", v2)
    interrupt_pointer_write(reg, monkeypatch)
    with pytest.raises(Crash):
        reg.rollback("prod")
    assert reg.current("prod") == v2
    assert [h["version"] for h in reg.history("prod")] == [v1, v2]


def test_models_cli_takes_registry_after_the_action_and_refuses_a_missing_one(registry, capsys):  # noqa: F811
    from stream_ae.cli import main

    reg, (v1, _) = registry
    assert main(["models", "promote", v1, "--registry", str(reg.root), "--deployment", "prod"]) == 0
    assert reg.current("prod") == v1
    assert main(["models", "--registry", str(reg.root), "list"]) == 0
    assert "<- prod" in capsys.readouterr().out
    missing = str(reg.root) + "-typo"
    assert main(["models", "list", "--registry", missing]) == 1
    err = capsys.readouterr().err
    assert f"registry {missing} does not exist" in err
