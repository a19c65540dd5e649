"""`models promote` and `rollback` say when running consumers cannot hot-swap the new model.

The retrain job never promotes a model with other channels or another window length: running
consumers refuse such a hot reload and keep the old model, while a restarted one loads the new
one, so one group would serve two models. A person may promote it by hand (the way on for a
new sensor), and is told at that moment to restart the consumers.
"""

from __future__ import annotations

from stream_ae.cli import main
from stream_ae.registry import Registry
from test_registry import tiny_artifact


def test_a_promotion_that_changes_the_channels_or_window_warns_and_still_happens(tmp_path, capsys):
    reg = Registry(tmp_path / "models")
    v1 = reg.publish(tiny_artifact(0))
    same = reg.publish(tiny_artifact(1))
    sensor = reg.publish(tiny_artifact(2, channels=("a", "b", "c")))
    longer = reg.publish(tiny_artifact(3, window=12))
    args = ["--registry", str(reg.root), "--deployment", "prod"]

    assert main(["models", "promote", v1, *args]) == 0
    assert main(["models", "promote", same, *args]) == 0
    assert "warning" not in capsys.readouterr().err   # same channels and window: a hot swap

    assert main(["models", "promote", sensor, *args]) == 0
    err = capsys.readouterr().err
    assert reg.current("prod") == sensor
    assert "warning" in err and "['a', 'b', 'c']" in err and "restart them all" in err

    assert main(["models", "rollback", *args]) == 0   # back to two channels: the same holds
    assert "cannot hot-swap" in capsys.readouterr().err and reg.current("prod") == same

    assert main(["models", "promote", longer, *args]) == 0
    assert "windows of 12" in capsys.readouterr().err
