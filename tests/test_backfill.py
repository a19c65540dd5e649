"""Backfill, end to end: a small hive-partitioned archive -> train -> scores dataset."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from stream_ae.backfill import SCORES_SCHEMA, parse_shard, run_backfill, shard_of
from stream_ae.errors import ArtifactError, ConfigError, DataError, SchemaMismatch

ENTITIES = ("pump-a", "pump-b", "pump-c")
CHANNELS = ("flow", "pressure", "temp")
DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")
STEP_S = 240                       # 360 rows per entity and day
ANOMALY_ENTITY, ANOMALY_DAY = "pump-b", 2
ANOMALY_ROWS = slice(150, 190)     # rows of that day


def _frame(entity: str, day_index: int, rng) -> pd.DataFrame:
    n = 86_400 // STEP_S
    t0 = pd.Timestamp(DAYS[day_index], tz="UTC")
    ts = t0 + pd.to_timedelta(np.arange(n) * STEP_S, unit="s")
    phase = (day_index * n + np.arange(n)) * 2 * np.pi / 60 + ENTITIES.index(entity)
    values = np.stack([np.sin(phase), np.cos(phase), 0.5 * np.sin(2 * phase)], axis=1)
    values = values + rng.normal(0, 0.05, values.shape)
    if entity == ANOMALY_ENTITY and day_index == ANOMALY_DAY:
        values[ANOMALY_ROWS, 1] += 4.0          # a pressure excursion
    frame = pd.DataFrame(values.astype(np.float32), columns=list(CHANNELS))
    frame.insert(0, "timestamp", ts)
    frame.insert(0, "entity", entity)
    return frame


def write_archive(root: Path, edit=None) -> Path:
    """Hive by date, two files a day: part-0 (pump-a, pump-b), part-1 (pump-c)."""
    rng = np.random.default_rng(7)
    for d, day in enumerate(DAYS):
        frames = {e: _frame(e, d, rng) for e in ENTITIES}
        for part, members in enumerate((ENTITIES[:2], ENTITIES[2:])):
            frame = pd.concat([frames[e] for e in members], ignore_index=True)
            if edit is not None:
                frame = edit(day, part, frame)
            (root / f"date={day}").mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                           root / f"date={day}" / f"part-{part}.parquet")
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def artifact(archive, tmp_path_factory) -> Path:
    from stream_ae.artifact import save_artifact
    from stream_ae.data.layout import Layout
    from stream_ae.data.windows import WindowSpec
    from stream_ae.models.config import ModelConfig
    from stream_ae.thresholds import ThresholdSpec
    from stream_ae.training import TrainConfig, train

    art = train(str(archive), Layout(), WindowSpec(length=16, hop=1), ModelConfig(window=16),
                TrainConfig(epochs=2, max_windows=2_000, progress=False, device="cpu"),
                ThresholdSpec(kind="quantile", quantile=0.99, factor=1.5, warmup=50),
                end="2026-01-03")
    return save_artifact(art, tmp_path_factory.mktemp("models"))


def read_scores(out: Path, partitioning="hive") -> pd.DataFrame:
    frame = ds.dataset(out, format="parquet", partitioning=partitioning).to_table().to_pandas()
    frame["top_channels"] = frame["top_channels"].map(tuple)
    frame["model_version"] = frame["model_version"].astype(str)
    if "date" in frame:
        frame["date"] = frame["date"].astype(str)
    return frame.sort_values(["entity", "window_end"]).reset_index(drop=True)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def full(archive, artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores-full")
    report = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False,
                          batch_rows=500)
    return out, report


def test_scores_dataset_is_partitioned_like_its_input_with_the_scores_schema(archive, full):
    out, report = full
    parts = [p for p in files_under(out) if not p.startswith("_checkpoints")]
    assert {os.path.dirname(p) for p in parts} == {f"date={d}" for d in DAYS}
    assert len(parts) == 6 and all(os.path.basename(p).startswith("part-0-") for p in parts)
    assert sorted(report.output_files) == sorted(str(out / p) for p in parts)
    for p in parts:
        assert pq.read_schema(out / p).remove_metadata() == SCORES_SCHEMA
    scores = read_scores(out)
    # windows of 16 rows, hop 1, 1080 rows per entity: 1065 windows each, no gap across files
    assert report.windows_scored == len(scores) == 3 * (3 * 360 - 15)
    assert report.rows_read == 3 * 3 * 360 and report.complete
    assert scores.groupby("entity").size().to_dict() == {e: 1065 for e in ENTITIES}
    assert (scores["window_end"] - scores["window_start"] == pd.Timedelta(seconds=15 * STEP_S)).all()
    assert scores["top_channels"].map(len).eq(3).all()
    assert scores["ready"].all() and np.isfinite(scores["threshold"]).all()
    assert (scores["anomaly"] == (scores["score"] > scores["threshold"])).all()


def test_injected_anomaly_is_flagged_more_than_normal_windows(full):
    scores = read_scores(full[0])
    t0 = pd.Timestamp(DAYS[ANOMALY_DAY], tz="UTC")
    lo = t0 + pd.Timedelta(seconds=ANOMALY_ROWS.start * STEP_S)
    hi = t0 + pd.Timedelta(seconds=(ANOMALY_ROWS.stop - 1) * STEP_S)
    hit = (scores["entity"] == ANOMALY_ENTITY) & (scores["window_end"] >= lo) & (scores["window_start"] <= hi)
    assert hit.sum() > 30
    assert scores.loc[hit, "anomaly"].mean() > 0.5 > 5 * scores.loc[~hit, "anomaly"].mean()
    assert scores.loc[hit, "score"].median() > 5 * scores.loc[~hit, "score"].median()
    assert (scores.loc[hit & scores["anomaly"], "top_channels"].str[0] == "pressure").mean() > 0.8


def test_resume_after_an_abort_equals_an_uninterrupted_run(archive, artifact, full, tmp_path,
                                                           monkeypatch):
    from stream_ae.scoring import Scorer

    out = tmp_path / "scores"
    first = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False,
                         batch_rows=500, max_fragments=2)
    assert first.fragments_done == 2 and not first.complete
    # then a crash in the middle of the fifth fragment (its first batch already written)
    calls, real = {"n": 0}, Scorer.score_rows

    def failing(self, rows, starts):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, rows, starts)

    monkeypatch.setattr(Scorer, "score_rows", failing)
    with pytest.raises(KeyboardInterrupt):
        run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False,
                     batch_rows=500, checkpoint_every_s=0)
    monkeypatch.setattr(Scorer, "score_rows", real)
    assert not [p for p in files_under(out) if os.path.basename(p).startswith(".")]
    assert len([p for p in files_under(out) if p.startswith("date=")]) == 4

    stale = out / f"date={DAYS[2]}" / ".part-0-0123456789abcdef.parquet.1a2b3c4d.tmp"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"left by a run killed with SIGKILL")
    resumed = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False,
                           batch_rows=500)
    assert resumed.fragments_resumed == 4 and resumed.fragments_done == 2 and resumed.complete
    assert resumed.windows_scored == full[1].windows_scored
    assert files_under(out) == files_under(full[0])
    pd.testing.assert_frame_equal(read_scores(out), read_scores(full[0]))


def test_shards_together_equal_the_unsharded_run(archive, artifact, full, tmp_path):
    out = tmp_path / "scores"
    reports = [run_backfill(str(archive), str(artifact), str(out), shard=f"{i}/3", device="cpu",
                            progress=False, batch_rows=500) for i in range(3)]
    owners = {e: shard_of(e, 3) for e in ENTITIES}
    for i, report in enumerate(reports):
        mine = {e for e in ENTITIES if owners[e] == i}
        assert report.rows_read == 1080 * len(mine)
        for f in report.output_files:
            assert os.path.basename(f).startswith(f"part-{i}-")
            assert set(pq.read_table(f, columns=["entity"])["entity"].to_pylist()) <= mine
    pd.testing.assert_frame_equal(read_scores(out), read_scores(full[0]))


def write_by_entity(archive: Path) -> Path:
    """Hive by entity then date, one file each: the entity lives only in the directory name."""
    rng = np.random.default_rng(7)
    for d, day in enumerate(DAYS):
        for e in ENTITIES:
            folder = archive / f"entity={e}" / f"date={day}"
            folder.mkdir(parents=True)
            frame = _frame(e, d, rng).drop(columns=["entity"])
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-0.parquet")
    return archive


def test_shards_skip_files_of_other_shards_entities_unread(artifact, tmp_path):
    archive = write_by_entity(tmp_path / "by-entity")
    whole = run_backfill(str(archive), str(artifact), str(tmp_path / "whole"), device="cpu",
                         progress=False)
    assert {os.path.dirname(p) for p in files_under(tmp_path / "whole") if p.startswith("date=")} \
        == {f"date={d}" for d in DAYS}      # every part holds its entity column: no entity= folder
    owners = {e: shard_of(e, 3) for e in ENTITIES}
    for i in range(3):
        report = run_backfill(str(archive), str(artifact), str(tmp_path / "sharded"), shard=(i, 3),
                              device="cpu", progress=False)
        others = sum(owner != i for owner in owners.values())
        assert report.fragments_other_shards == 3 * others and report.complete
        assert report.fragments_done == 3 * (3 - others)
    whole_scores = read_scores(tmp_path / "whole", partitioning=None)
    pd.testing.assert_frame_equal(read_scores(tmp_path / "sharded", partitioning=None), whole_scores)
    assert len(whole_scores) == whole.windows_scored == 3 * 1065


def test_a_checkpoint_of_other_arguments_is_refused_unless_restarted(archive, artifact, tmp_path):
    out = tmp_path / "scores"
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False,
                 batch_rows=500, max_fragments=1, end="2030-01-01")
    with pytest.raises(ConfigError, match="end: was '2030-01-01', now None.*--restart"):
        run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False,
                     batch_rows=500)
    retrained = tmp_path / "models" / "conv-retrained"
    shutil.copytree(artifact, retrained)
    manifest = json.loads((retrained / "manifest.json").read_text())
    (retrained / "manifest.json").write_text(json.dumps({**manifest, "version": "conv-retrained"}))
    with pytest.raises(ArtifactError, match="model version .* but this run uses 'conv-retrained'"):
        run_backfill(str(archive), str(retrained), str(out), device="cpu", progress=False,
                     batch_rows=500)
    report = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False,
                          batch_rows=400, restart=True)
    assert report.fragments_resumed == 0 and report.complete


def test_a_resume_keeps_the_precision_it_started_with(archive, artifact, full, tmp_path, monkeypatch):
    from stream_ae import scoring

    # the subject is the backfill's bookkeeping, not bf16 speed: on a CPU that only emulates bf16
    # (a user is refused it there: too slow) the conv model still runs it, so it is allowed here
    monkeypatch.setattr(scoring, "cpu_has_native_bf16", lambda: True)
    out = tmp_path / "scores"
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False,
                 batch_rows=500, max_fragments=1, precision="bf16")
    with pytest.raises(ConfigError, match="precision.*--restart"):  # fp32 parts after bf16 ones: refused
        run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, batch_rows=500)
    report = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False,
                          batch_rows=500, precision="bf16")
    assert report.fragments_resumed == 1 and report.complete
    bf16, fp32 = read_scores(out, partitioning=None), read_scores(full[0], partitioning=None)
    assert len(bf16) == len(fp32) == full[1].windows_scored
    assert not np.array_equal(bf16["score"], fp32["score"])  # it did score in bf16
    np.testing.assert_allclose(bf16["score"], fp32["score"], rtol=0.05)


def test_files_with_entities_interleaved_in_time_give_the_same_scores(artifact, full, tmp_path):
    archive = write_archive(tmp_path / "archive", edit=lambda day, part, f: f.sort_values(
        ["timestamp", "entity"], kind="stable", ignore_index=True))
    out = tmp_path / "out"
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, batch_rows=500)
    # other batches go through the model together: equal up to float rounding
    pd.testing.assert_frame_equal(read_scores(out), read_scores(full[0]), check_exact=False, rtol=1e-5)


def test_out_of_order_readings_name_the_file_the_entity_and_the_column(artifact, tmp_path):
    def swap(day, part, frame):
        if day == DAYS[1] and part == 0:
            frame.iloc[[100, 101]] = frame.iloc[[101, 100]].to_numpy()
        return frame

    archive = write_archive(tmp_path / "archive", edit=swap)
    with pytest.raises(DataError) as err:
        run_backfill(str(archive), str(artifact), str(tmp_path / "out"), device="cpu",
                     progress=False)
    message = str(err.value)
    assert f"date={DAYS[1]}" in message and "part-0.parquet" in message
    assert "'pump-a'" in message and "timestamp" in message and "sorted" in message
    assert not [p for p in files_under(tmp_path / "out") if os.path.basename(p).startswith(".")]


def test_duplicate_readings_are_dropped_and_counted(artifact, full, tmp_path):
    def duplicate(day, part, frame):
        return pd.concat([frame.iloc[:10], frame.iloc[9:]], ignore_index=True) if part == 1 else frame

    archive = write_archive(tmp_path / "archive", edit=duplicate)
    report = run_backfill(str(archive), str(artifact), str(tmp_path / "out"), device="cpu",
                          progress=False)
    assert report.duplicates_dropped == 3
    assert report.windows_scored == full[1].windows_scored


def test_an_archive_with_other_channels_is_refused(artifact, tmp_path):
    """A model channel in no file of the archive names the archive and the columns it has; an
    explicit layout other than the model's channels is a schema mismatch."""
    from stream_ae.data.layout import Layout

    archive = write_archive(tmp_path / "archive",
                            edit=lambda day, part, f: f.rename(columns={"temp": "vibration"}))
    with pytest.raises(DataError, match=r"archive: channel column 'temp' not found in any of the 6 file.*'vibration'"):
        run_backfill(str(archive), str(artifact), str(tmp_path / "out"), progress=False)
    with pytest.raises(SchemaMismatch, match="temp"):
        run_backfill(str(archive), str(artifact), str(tmp_path / "out"), progress=False,
                     layout=Layout(channels=("flow", "pressure", "vibration")))


def test_shard_argument_is_validated():
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", (0, 0)):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)


def test_a_checkpoint_from_before_the_precision_option_resumes_as_fp32():
    from stream_ae.backfill.checkpoint import Checkpoint

    archive = {"uri": "a", "fragments": 1}
    old = Checkpoint("v1", archive, {"batch_rows": 500})  # written before "precision" existed
    old.check_matches("v1", archive, {"batch_rows": 500, "precision": "fp32"}, "ckpt.json")
    with pytest.raises(ConfigError, match="precision: was 'fp32', now 'bf16'"):
        old.check_matches("v1", archive, {"batch_rows": 500, "precision": "bf16"}, "ckpt.json")
