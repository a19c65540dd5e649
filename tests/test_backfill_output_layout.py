"""The scores of an archive partitioned by entity read back with any hive reader."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stream_ae.backfill import run_backfill
from test_backfill import (CHANNELS, DAYS, ENTITIES, _frame, archive, artifact, files_under,  # noqa: F401
                           read_scores)

IDS = {"pump-a": "0042", "pump-b": "7", "pump-c": "pump-c"}   # ids a reader could take for numbers


def _by_entity(root, key="entity"):
    rng = np.random.default_rng(7)
    for d, day in enumerate(DAYS):
        for e in ENTITIES:   # the entity lives only in the folder's name
            folder = root / f"{key}={IDS[e]}" / f"date={day}"
            folder.mkdir(parents=True)
            frame = _frame(e, d, rng).drop(columns=["entity"])
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-0.parquet")
    return root


def test_pandas_reads_the_scores_of_an_entity_partitioned_archive(artifact, tmp_path):
    out = tmp_path / "scores"
    report = run_backfill(str(_by_entity(tmp_path / "archive")), str(artifact), str(out), device="cpu",
                          progress=False)
    assert {os.path.dirname(p) for p in files_under(out) if p.endswith(".parquet")} \
        == {f"date={d}" for d in DAYS}
    frame = pd.read_parquet(out)            # hive partitioning, as most users read a dataset
    assert len(frame) == report.windows_scored > 0
    assert sorted(frame["entity"].astype(str).unique()) == sorted(IDS.values())
    assert list(frame["date"].astype(str).unique()) == list(DAYS)
    by_file = read_scores(out, partitioning=None)
    assert sorted(by_file["entity"].unique()) == sorted(IDS.values())


def test_the_layouts_entity_key_is_not_mirrored_either(artifact, tmp_path):
    from stream_ae.artifact import load_artifact
    layout = load_artifact(str(artifact)).layout
    import dataclasses
    layout = dataclasses.replace(layout, entity="device", channels=CHANNELS)
    out = tmp_path / "scores"
    run_backfill(str(_by_entity(tmp_path / "archive", key="device")), str(artifact), str(out),
                 device="cpu", progress=False, layout=layout)
    frame = pd.read_parquet(out)
    assert "device" not in frame.columns
    assert sorted(frame["entity"].astype(str).unique()) == sorted(IDS.values())


def test_a_run_resumed_from_an_older_checkpoint_keeps_its_folders(artifact, tmp_path):
    archive, out = _by_entity(tmp_path / "archive"), tmp_path / "scores"
    first = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, max_fragments=2)
    ckpt = out / "_checkpoints" / "shard-0-of-1.json"
    raw = json.loads(ckpt.read_text())
    del raw["output_layout"]                 # as written before the entity= folders were dropped
    moved = []
    for part, key in zip(first.output_files, raw["completed"]):
        legacy = out / os.path.dirname(key) / os.path.basename(part)
        legacy.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, legacy)
        moved.append(str(legacy))
    raw["output_files"] = moved
    ckpt.write_text(json.dumps(raw))
    resumed = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False)
    assert resumed.fragments_resumed == 2 and resumed.complete
    assert all(os.path.relpath(p, out).startswith("entity=") for p in resumed.output_files)
    fresh = run_backfill(str(archive), str(artifact), str(tmp_path / "fresh"), device="cpu", progress=False)
    pd.testing.assert_frame_equal(read_scores(out, partitioning=None),
                                  read_scores(tmp_path / "fresh", partitioning=None))
    assert fresh.windows_scored == resumed.windows_scored
