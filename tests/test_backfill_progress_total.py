"""The backfill's progress bar has a total, and reaches it exactly, on a resumed run and on a
shard of an archive partitioned by entity (it had none there before session 31)."""
from __future__ import annotations

import pytest

import stream_ae.backfill.runner as runner
from stream_ae.backfill import run_backfill
from tests.test_backfill import DAYS, archive, artifact, write_by_entity  # noqa: F401  (fixtures)


class Bar:
    """Stands in for tqdm: keeps the total and what was counted."""

    made: list = []

    def __init__(self, total=None, disable=False, **kwargs):
        self.total, self.n = total, 0
        if not disable:
            Bar.made.append(self)

    def update(self, n):
        self.n += n

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


@pytest.fixture
def bars(monkeypatch):
    Bar.made = []
    monkeypatch.setattr(runner, "progress_bar", lambda enabled=True, **kwargs: Bar(disable=not enabled, **kwargs))
    return Bar.made


def test_a_resumed_run_counts_the_rows_it_has_left(archive, artifact, tmp_path, bars):
    out = str(tmp_path / "out")
    run_backfill(str(archive), str(artifact), out, max_fragments=2, start="2026-01-01T06:00")
    run_backfill(str(archive), str(artifact), out, start="2026-01-01T06:00")
    first, resumed = bars
    assert resumed.total is not None and resumed.total == resumed.n > 0
    fresh = run_backfill(str(archive), str(artifact), str(tmp_path / "fresh"), start="2026-01-01T06:00")
    assert bars[2].total == bars[2].n == fresh.rows_read == first.n + resumed.n


def test_a_shard_of_an_archive_by_entity_counts_its_own_files(artifact, tmp_path, bars):
    archive = write_by_entity(tmp_path / "by-entity")
    rows = 0
    for i in range(3):
        report = run_backfill(str(archive), str(artifact), str(tmp_path / "sharded"), shard=(i, 3))
        bar = bars[-1]
        assert bar.total == bar.n == report.rows_read
        rows += bar.total
    assert rows == 3 * len(DAYS) * 360


def test_the_bar_is_silent_when_stderr_is_not_a_terminal(archive, artifact, tmp_path, capsys):  # noqa: F811
    """Before: tqdm(disable=not progress) drew its updates into a cron job's or CI's log file."""
    run_backfill(str(archive), str(artifact), str(tmp_path / "out"), device="cpu", progress=True)
    assert "backfill 0/1" not in capsys.readouterr().err
