"""`stream-ae evaluate skab` checks every name it was given before the minutes of evaluation:
a typo in the last model or variant, or in --plot-file, stopped it only after the others ran."""
from __future__ import annotations

import argparse

import pytest

from stream_ae.errors import ConfigError


def _args(tmp_path, **extra):
    for group in ("valve1", "valve2", "other"):
        (tmp_path / group).mkdir(exist_ok=True)
        (tmp_path / group / "0.csv").write_text("")
    args = argparse.Namespace(data=str(tmp_path), model="conv", variant="undercomplete", protocol="all",
                              json_path=None, plot=None, plot_file="valve1/0.csv", device="cpu", seed=0,
                              precision="fp32", no_progress=True)
    vars(args).update(extra)
    return args


@pytest.mark.parametrize("extra, message", [
    ({"model": "conv,gru"}, "unknown preset 'gru'"),
    ({"variant": "undercomplete,denoisng"}, "--variant denoisng: unknown"),
    ({"plot": "plot.png", "plot_file": "valve9/1.csv"}, "--plot-file 'valve9/1' is not a labelled SKAB file"),
    ({"precision": "fp16"}, "fp16"),
])
def test_a_bad_name_stops_before_any_evaluation(tmp_path, monkeypatch, extra, message):
    import stream_ae.evaluation.skab as skab

    def never(*a, **k):
        raise AssertionError("evaluated before the names were checked")
    monkeypatch.setattr(skab, "run_protocol", never)
    if "plot" in extra:
        extra["plot"] = str(tmp_path / extra["plot"])
    with pytest.raises(ConfigError, match=message):
        skab.run_skab_cli(_args(tmp_path, **extra))
