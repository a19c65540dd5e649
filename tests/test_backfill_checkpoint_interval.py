"""Backfill checkpoints are saved at most every ``checkpoint_every_s``: each save writes
every entity's state, so one per input file grew with the entities squared."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from stream_ae.backfill import run_backfill
from stream_ae.errors import ConfigError
from test_backfill import archive, artifact, files_under, full, read_scores  # noqa: F401


def _count_saves(monkeypatch):
    import stream_ae.backfill.checkpoint as checkpoint
    saves, real = [], checkpoint.save_checkpoint
    monkeypatch.setattr(checkpoint, "save_checkpoint", lambda fs, path, c: (saves.append(len(c.completed)),
                                                                          real(fs, path, c)))
    return saves


def test_a_checkpoint_is_saved_per_interval_and_when_the_run_ends(archive, artifact, tmp_path, monkeypatch):
    saves = _count_saves(monkeypatch)
    report = run_backfill(str(archive), str(artifact), str(tmp_path / "a"), device="cpu", progress=False,
                          checkpoint_every_s=3600)
    assert saves == [6]                       # once, at the end, with every file
    assert report.checkpoints_saved == 1 and report.checkpoint_seconds > 0
    saves.clear()
    run_backfill(str(archive), str(artifact), str(tmp_path / "b"), device="cpu", progress=False,
                 checkpoint_every_s=0)
    assert saves == [1, 2, 3, 4, 5, 6]
    saves.clear()
    run_backfill(str(archive), str(artifact), str(tmp_path / "c"), device="cpu", progress=False,
                 checkpoint_every_s=3600, max_fragments=2)
    assert saves == [2]                       # a run stopped early saves what it completed


def test_a_crash_between_saves_rescores_since_the_last_one_and_doubles_nothing(archive, artifact, full,
                                                                               tmp_path, monkeypatch):
    from stream_ae.scoring import Scorer

    out = tmp_path / "scores"
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, batch_rows=500,
                 max_fragments=2)
    calls, real = {"n": 0}, Scorer.score_rows

    def failing(self, rows, starts):
        calls["n"] += 1
        if calls["n"] == 5:                   # in the fifth file, after two more completed unsaved
            raise KeyboardInterrupt
        return real(self, rows, starts)

    monkeypatch.setattr(Scorer, "score_rows", failing)
    with pytest.raises(KeyboardInterrupt):
        run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, batch_rows=500,
                     checkpoint_every_s=3600)
    monkeypatch.setattr(Scorer, "score_rows", real)
    assert len([p for p in files_under(out) if p.startswith("date=")]) == 4   # two written since the save
    resumed = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, batch_rows=500)
    assert resumed.fragments_resumed == 2 and resumed.fragments_done == 4 and resumed.complete
    assert resumed.windows_scored == full[1].windows_scored
    assert files_under(out) == files_under(full[0])
    pd.testing.assert_frame_equal(read_scores(out), read_scores(full[0]))
    assert sorted(map(os.path.basename, resumed.output_files)) == sorted(map(os.path.basename, full[1].output_files))


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_a_negative_interval_is_refused(archive, artifact, tmp_path, bad):
    with pytest.raises(ConfigError, match=r"checkpoint_every_s\) must be 0 or more"):
        run_backfill(str(archive), str(artifact), str(tmp_path / "x"), device="cpu", progress=False,
                     checkpoint_every_s=bad)
