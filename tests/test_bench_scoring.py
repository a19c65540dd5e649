"""`stream-ae bench scoring`: the scorer alone, on the CPU here (its CUDA runs are in docs/performance.md)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from stream_ae.bench import scoring

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_counted_flops_are_those_of_the_scored_tail_only():
    art = scoring.preset_artifact()
    tail = scoring.flops_per_window(art)
    whole = scoring.flops_per_window(dataclasses.replace(art, model=dataclasses.replace(art.model, score_steps=0)))
    assert art.model.score_steps == 20 and 0 < tail < whole


def test_bench_scoring_prints_each_configuration_as_json(monkeypatch, tmp_path, capsys):
    from stream_ae.cli import main

    monkeypatch.setattr(scoring, "WINDOWS", {"cpu": 4096, "cuda": 4096})
    monkeypatch.setattr(scoring, "REPEATS", 1)
    assert main(["bench", "scoring", "--device", "cpu", "--json", str(tmp_path / "s.json")]) == 0
    result = json.loads((tmp_path / "s.json").read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["device"] == "cpu" and result["device_ceilings"] == {}
    assert [r["batch"] for r in result["runs"]] == [2048] * len(result["runs"])
    assert all(r["traced_graph"] and r["windows_per_s"] > 0 for r in result["runs"])
    assert "target_windows_per_s" not in result  # the 1 M windows/s target is a GPU's
