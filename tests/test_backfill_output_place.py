"""``--out`` is checked before anything is read: inside ``--archive`` or an existing file is a
ConfigError that says what to change.

Before: an ``--out`` inside the archive was accepted, and the next backfill or training read the
score files as history and stopped with "timestamp column 'timestamp' not found ... Set
Layout(timestamp=...)", which points at the wrong fix; an ``--out`` that is a file failed with a
raw "[Errno 17]" after the first batch had been scored."""

from __future__ import annotations

import pytest

from stream_ae.backfill import run_backfill
from stream_ae.errors import ConfigError
from test_backfill import archive, artifact  # noqa: F401 - fixtures


@pytest.mark.parametrize("inside", ["scores", "date=2026-01-01/scores", "."])
def test_an_out_inside_the_archive_is_refused_before_reading(archive, artifact, inside):  # noqa: F811
    with pytest.raises(ConfigError, match="lies inside --archive .* choose an --out outside the archive"):
        run_backfill(str(archive), str(artifact), str(archive / inside), device="cpu", progress=False)
    assert not (archive / "scores").exists()


def test_an_out_that_is_a_file_is_refused_before_reading(archive, artifact, tmp_path):  # noqa: F811
    taken = tmp_path / "scores.parquet"
    taken.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        run_backfill(str(archive), str(artifact), str(taken), device="cpu", progress=False)


def test_an_out_beside_the_archive_with_a_common_prefix_is_fine(archive, artifact, tmp_path):  # noqa: F811
    out = archive.parent / (archive.name + "-scores")
    report = run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False)
    assert report.windows_scored > 0


def test_an_entity_without_a_window_is_named_with_why(artifact, tmp_path):  # noqa: F811
    """Before: an entity whose sensor never reported was left out of the scores without a word."""
    import numpy as np

    from test_backfill import write_archive

    def no_temp_for_pump_c(day, part, frame):
        frame.loc[frame["entity"] == "pump-c", "temp"] = np.nan
        return frame

    archive = write_archive(tmp_path / "archive", edit=no_temp_for_pump_c)
    report = run_backfill(str(archive), str(artifact), str(tmp_path / "scores"), device="cpu", progress=False)
    assert report.entities_without_windows == {"pump-c": "no value to fill temp from"}
    assert report.windows_scored > 0
    again = run_backfill(str(archive), str(artifact), str(tmp_path / "scores"), device="cpu", progress=False)
    assert again.entities_without_windows == report.entities_without_windows   # also when resumed, all done
