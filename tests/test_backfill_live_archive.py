"""A backfill of an archive the archiver still writes: files added after the last one a checkpoint
listed are the same run's, so a killed run resumes into them, and a finished one scores only them.
Before session 31 both were refused, and --restart scored everything again.

A file the checkpoint listed that changed or went, or a file added before its last, is still
refused: the entities' windows and thresholds run in file order.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_ae.backfill import run_backfill
from stream_ae.errors import ConfigError
from tests.test_backfill import (DAYS, archive, artifact, files_under, full, read_scores,  # noqa: F401  (fixtures)
                                 write_archive)


def _live(archive: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the archive whose last day the archiver has not written yet; the day, aside."""
    live, later = tmp_path / "live", tmp_path / "later"
    shutil.copytree(archive, live)
    shutil.move(str(live / f"date={DAYS[2]}"), str(later))
    return live, later


def _archiver_writes(live: Path, later: Path) -> None:
    shutil.move(str(later), str(live / f"date={DAYS[2]}"))


def test_a_killed_run_resumes_into_the_files_the_archiver_added(archive, artifact, full, tmp_path):
    live, later = _live(archive, tmp_path)
    out = tmp_path / "scores"
    first = run_backfill(str(live), str(artifact), str(out), device="cpu", progress=False, batch_rows=500,
                         max_fragments=2)
    assert first.fragments_done == 2 and not first.complete    # killed, 2 of its 4 files done
    _archiver_writes(live, later)
    resumed = run_backfill(str(live), str(artifact), str(out), device="cpu", progress=False, batch_rows=500)
    assert resumed.fragments_resumed == 2 and resumed.fragments_done == 4 and resumed.complete
    assert files_under(out / f"date={DAYS[0]}") == files_under(full[0] / f"date={DAYS[0]}")
    pd.testing.assert_frame_equal(read_scores(out), read_scores(full[0]))


def test_a_finished_run_scores_only_the_new_files_and_equals_one_run_over_all(archive, artifact, full, tmp_path):
    live, later = _live(archive, tmp_path)
    out = tmp_path / "scores"
    assert run_backfill(str(live), str(artifact), str(out), device="cpu", progress=False, batch_rows=500).complete
    _archiver_writes(live, later)
    again = run_backfill(str(live), str(artifact), str(out), device="cpu", progress=False, batch_rows=500)
    assert again.fragments_resumed == 4 and again.fragments_done == 2 and again.complete
    assert again.windows_scored == full[1].windows_scored
    pd.testing.assert_frame_equal(read_scores(out), read_scores(full[0]))


def test_a_file_added_before_the_last_listed_or_a_listed_file_changed_is_refused(artifact, tmp_path):
    arch = write_archive(tmp_path / "arch")
    out = tmp_path / "scores"
    run_backfill(str(arch), str(artifact), str(out), progress=False, max_fragments=2)
    extra = pq.read_table(arch / f"date={DAYS[0]}" / "part-1.parquet")
    pq.write_table(extra, arch / f"date={DAYS[0]}" / "part-1b.parquet")   # sorts before the last listed
    with pytest.raises(ConfigError, match=r"\(6 files\), which differs .* \(7 files\).*added before its last"):
        run_backfill(str(arch), str(artifact), str(out), progress=False)
    (arch / f"date={DAYS[0]}" / "part-1b.parquet").unlink()
    run_backfill(str(arch), str(artifact), str(out), progress=False, max_fragments=1)    # as it was: resumes
    table = pq.read_table(arch / f"date={DAYS[0]}" / "part-0.parquet")
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), arch / f"date={DAYS[0]}" / "part-0.parquet")
    with pytest.raises(ConfigError, match="a file it listed changed or went"):
        run_backfill(str(arch), str(artifact), str(out), progress=False)
