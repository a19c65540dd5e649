"""A channel of NaN values (not nulls) over the whole span a backfill reads: no window with it can
be scored, and the run says so instead of exiting 0 with nothing scored.

The footer statistics count nulls, not NaN, so this is known only once the rows are read; the
counting survives a resume in the checkpoint. One file where the sensor has no value is data (a
gap), as is a channel empty for the entities of one shard only when the run is not sharded.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_ae.backfill import run_backfill
from stream_ae.backfill.checkpoint import Checkpoint
from stream_ae.backfill.runner import shard_of
from stream_ae.errors import DataError
from tests.test_backfill import archive, artifact, files_under, write_archive  # noqa: F401  (fixtures)


def _nan_temp(root: Path, keep=lambda path, table: None) -> Path:
    """The archive with column ``temp`` NaN (float NaN, not null) where ``keep`` gives no mask;
    ``keep(path, table)`` may return a boolean mask of the rows that keep their value."""
    write_archive(root)
    for path in files_under(root):
        table = pq.read_table(root / path)
        mask = keep(path, table)
        temp = table.column("temp").to_numpy().astype(np.float64)
        temp = np.where(mask, temp, np.nan) if mask is not None else np.full(len(temp), np.nan)
        table = table.set_column(table.schema.get_field_index("temp"), "temp",
                                 pa.array(temp, type=table.schema.field("temp").type, from_pandas=False))
        assert table.column("temp").null_count == 0      # NaN values: the footers count no null
        pq.write_table(table, root / path)
    return root


def test_a_channel_nan_over_the_whole_span_stops_with_its_name_and_again_on_a_rerun(artifact, tmp_path):
    arch = _nan_temp(tmp_path / "arch")
    out = tmp_path / "out"
    for _ in range(2):   # the rerun resumes a complete run: the counts come from the checkpoint
        with pytest.raises(DataError, match=r"channel 'temp' has no value \(every one NaN or null\) in the "
                                            r"3240 rows read.*0 scored"):
            run_backfill(str(arch), str(artifact), str(out), progress=False)


def test_the_cli_exits_1_naming_the_channel(artifact, tmp_path, capsys):
    from stream_ae.cli import main

    arch = _nan_temp(tmp_path / "arch")
    assert main(["backfill", "--archive", str(arch), "--model", str(artifact), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 1
    assert "channel 'temp' has no value" in capsys.readouterr().err


def test_a_day_without_the_sensor_is_a_gap_not_an_error(artifact, tmp_path):
    arch = _nan_temp(tmp_path / "arch", keep=lambda path, table: np.full(table.num_rows, "2026-01-02" not in path))
    report = run_backfill(str(arch), str(artifact), str(tmp_path / "out"), progress=False)
    assert report.complete and report.windows_scored > 0


def test_a_shard_whose_entities_never_had_the_channel_names_its_shard(artifact, tmp_path):
    """pump-c alone in shard 1 of 4 lacks temp; the shard with pump-b and the unsharded run do not stop."""
    assert [shard_of(e, 4) for e in ("pump-a", "pump-b", "pump-c")] == [2, 0, 2]
    arch = _nan_temp(tmp_path / "arch", keep=lambda path, table: table.column("entity").to_numpy(
        zero_copy_only=False) != "pump-b")
    with pytest.raises(DataError, match=r"of shard 0/4's entities"):
        run_backfill(str(arch), str(artifact), str(tmp_path / "s0"), shard=(0, 4), progress=False)
    assert run_backfill(str(arch), str(artifact), str(tmp_path / "s2"), shard=(2, 4), progress=False).complete
    report = run_backfill(str(arch), str(artifact), str(tmp_path / "all"), progress=False)
    assert report.complete and report.windows_scored > 0


def test_a_run_stopped_early_is_not_judged_and_a_checkpoint_from_before_loads_unjudged(artifact, tmp_path):
    arch = _nan_temp(tmp_path / "arch")
    report = run_backfill(str(arch), str(artifact), str(tmp_path / "out"), progress=False, max_fragments=2)
    assert not report.complete     # the files left may hold values
    raw = json.loads(Checkpoint("v", {}, {}).to_json())
    del raw["counters"]["channels_seen"]
    old = Checkpoint.from_json(json.dumps(raw).encode(), "old.json")
    assert old.counters.channels_seen is None
