"""Which earlier parts a fresh backfill deletes: exactly those that would mix with its own.

- A shard of a run split otherwise, killed before any checkpoint named its parts, left them
  beside a later run's: every window of its entities was in the scores dataset twice.
- A fresh run deleted every `part-0-<hex>.parquet` at any depth under `--out`, so an earlier
  backfill kept in a sub-folder lost its scores while its checkpoint said complete.
"""

from __future__ import annotations

import pytest

from stream_ae.backfill import run_backfill
from stream_ae.scoring import Scorer
from test_backfill import archive, artifact, files_under, full, read_scores  # noqa: F401  (fixtures)


def test_a_killed_shard_of_another_split_leaves_no_duplicate_windows(archive, artifact, full,  # noqa: F811
                                                                   tmp_path, monkeypatch):
    out = tmp_path / "scores"
    calls, real = {"n": 0}, Scorer.score_rows

    def dying(self, rows, starts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt   # killed before its first checkpoint (every 30 s)
        return real(self, rows, starts)

    monkeypatch.setattr(Scorer, "score_rows", dying)
    with pytest.raises(KeyboardInterrupt):
        run_backfill(str(archive), str(artifact), str(out), shard="2/3", device="cpu", progress=False,
                     batch_rows=500)
    monkeypatch.setattr(Scorer, "score_rows", real)
    left = [p for p in files_under(out) if "/part-2-" in p]
    assert left and not [p for p in files_under(out) if p.endswith(".json")]   # parts, no checkpoint

    report = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, batch_rows=500)
    scores = read_scores(out)
    assert report.complete and not scores.duplicated(["entity", "window_end"]).any()
    assert len(scores) == report.windows_scored == full[1].windows_scored


def test_a_fresh_run_into_a_parent_folder_leaves_an_earlier_backfill_below_it(archive, artifact,  # noqa: F811
                                                                             tmp_path):
    out = tmp_path / "scores"
    run_backfill(str(archive), str(artifact), str(out / "model-v1"), device="cpu", progress=False, batch_rows=500)
    kept = [p for p in files_under(out) if p.startswith("model-v1/")]
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, batch_rows=500,
                 end="2026-01-02")
    assert [p for p in files_under(out) if p.startswith("model-v1/")] == kept
