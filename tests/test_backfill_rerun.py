"""A backfill run again, over an archive that is not tidy: what its output holds afterwards.

Each case lost or mixed scores before: parts of an earlier run stayed beside the new run's,
a scores part the checkpoint called done was never synced, a changed batch size refused a
resume, an uncalibrated model or a file in another time zone stopped the run.
"""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow.parquet as pq

from stream_ae.backfill import run_backfill
from stream_ae.backfill.checkpoint import checkpoint_path
from stream_ae.data.history import History
from test_backfill import DAYS, archive, artifact, full, read_scores, write_archive  # noqa: F401 - fixtures

START = "2026-01-01T12:00"   # halfway through day 1: its files are read again, from noon


def test_a_run_with_no_checkpoint_deletes_its_shards_earlier_parts(archive, artifact, tmp_path):
    """A killed run (its checkpoint removed, or killed between a part's rename and its
    checkpoint) left parts of day 1; a new run from noon of day 1 kept them in its output."""
    out = tmp_path / "scores"
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, max_fragments=2)
    (out / "_checkpoints" / "shard-0-of-1.json").unlink()
    unrelated = out / "date=2026-01-01" / "part-0-notours.parquet"   # not a name the backfill writes
    shutil.copy(next((out / "date=2026-01-01").glob("part-0-*.parquet")), unrelated)
    report = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, start=START)
    unrelated.unlink()
    scores = read_scores(out)
    assert len(scores) == report.windows_scored
    assert scores.window_end.min() >= pd.Timestamp(START, tz="UTC")


def test_a_changed_batch_size_resumes(archive, artifact, full, tmp_path):
    """Scores do not depend on it; a user lowering it after running out of memory had to start over."""
    out = tmp_path / "scores"
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, batch_rows=500,
                 max_fragments=2)
    report = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, batch_rows=300)
    assert report.fragments_resumed == 2 and report.complete
    pd.testing.assert_frame_equal(read_scores(out), read_scores(full[0]))


def test_a_scores_part_is_on_disk_before_the_checkpoint_names_it(archive, artifact, tmp_path, monkeypatch):
    from stream_ae import durable

    published = []
    real = durable.publish
    monkeypatch.setattr(durable, "publish", lambda tmp, path: (published.append(str(path)), real(tmp, path)))
    out = tmp_path / "scores"
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, max_fragments=1)
    parts = [p for p in published if p.endswith(".parquet")]
    checkpoint = json.loads((out / "_checkpoints" / "shard-0-of-1.json").read_text())
    assert parts == checkpoint["output_files"] and len(parts) == 1
    assert published.index(parts[0]) < published.index(checkpoint_path(str(out), (0, 1)))


def test_an_uncalibrated_model_backfills_warming_up(archive, artifact, tmp_path):
    model = tmp_path / "models" / artifact.name
    shutil.copytree(artifact, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["threshold"]["state"] = None
    (model / "manifest.json").write_text(json.dumps(manifest))
    report = run_backfill(str(archive), str(model), str(tmp_path / "scores"), device="cpu", progress=False)
    scores = read_scores(tmp_path / "scores").groupby("entity").head(20)
    assert report.complete and not scores.ready.any() and not scores.anomaly.any()


def test_a_time_range_over_files_of_two_time_zones(artifact, full, tmp_path):
    """Day 1's files hold naive timestamps (UTC by convention), the rest UTC ones; a --start
    made Arrow compare the two types and stop."""
    def naive_day_one(day, part, frame):
        if day == DAYS[0]:
            frame = frame.assign(timestamp=frame.timestamp.dt.tz_localize(None))
        return frame

    mixed = write_archive(tmp_path / "mixed", naive_day_one)
    assert pq.read_schema(mixed / f"date={DAYS[0]}" / "part-0.parquet").field("timestamp").type.tz is None
    start = f"{DAYS[0]}T12:00:00"
    run_backfill(str(mixed), str(artifact), str(tmp_path / "scores"), device="cpu", progress=True, start=start)
    tidy = write_archive(tmp_path / "tidy")
    run_backfill(str(tidy), str(artifact), str(tmp_path / "expected"), device="cpu", progress=False, start=start)
    pd.testing.assert_frame_equal(read_scores(tmp_path / "scores"), read_scores(tmp_path / "expected"))


def test_an_end_keeps_only_the_date_partitions_that_can_hold_its_rows(archive):
    """A day past ``--end`` was opened (and its files fingerprinted, so an archiver adding one
    refused the resume); kept are the days some zone's local date can put rows before it."""
    history = History.open(str(archive), end=f"{DAYS[1]}T00:00:00")
    assert {f.partition["date"] for f in history.fragments()} == {DAYS[0], DAYS[1]}


def test_an_empty_file_written_from_an_empty_frame_may_come_first(artifact, full, tmp_path):
    """Its object columns are null-typed; as the first file it set the archive's schema, and
    the whole archive was refused as 'entity column has type null', naming the root."""
    root = write_archive(tmp_path / "archive")
    empty = pd.DataFrame({"entity": pd.Series([], dtype=object),
                          "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
                          **{c: pd.Series([], dtype="float32") for c in ("flow", "pressure", "temp")}})
    (root / "date=2025-12-31").mkdir()
    empty.to_parquet(root / "date=2025-12-31" / "part-0.parquet", index=False)
    report = run_backfill(str(root), str(artifact), str(tmp_path / "scores"), device="cpu", progress=False)
    assert report.complete
    pd.testing.assert_frame_equal(read_scores(tmp_path / "scores"), read_scores(full[0]))
