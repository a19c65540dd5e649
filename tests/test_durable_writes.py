"""Small records that a restart trusts (the registry's pointer, a backfill checkpoint, a
retrain report) are published by rename, and the rename survives a power cut only once the
folder holding it is synced. These tests record what gets synced."""
from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from stream_ae.backfill.output import write_bytes_atomic
from stream_ae.registry import Registry
from stream_ae.retraining.report import RetrainReport, write_report


@pytest.fixture
def synced(monkeypatch):
    """Paths passed to fsync, in order (a folder's path when a folder was synced)."""
    seen: list[str] = []
    real = os.fsync

    def record(fd):
        seen.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def _after_rename(seen: list[str], path) -> bool:
    """The record's folder was synced, and after anything else of the write."""
    folder = os.path.realpath(os.path.dirname(path))
    return bool(seen) and seen[-1] == folder and os.path.exists(path)


def test_a_replaced_registry_record_syncs_its_folder(tmp_path, synced):
    registry = Registry(tmp_path / "reg")
    registry.put_record("jobs/retrain/state.json", {"n": 1})
    assert _after_rename(synced, tmp_path / "reg" / "jobs" / "retrain" / "state.json"), synced


def test_a_backfill_checkpoint_syncs_the_file_then_its_folder(tmp_path, synced):
    path = tmp_path / "out" / "_checkpoint.json"
    write_bytes_atomic(pafs.LocalFileSystem(), str(path), b"{}")
    assert any(p.startswith(str(tmp_path / "out") + "/.") for p in synced), synced   # the data first
    assert _after_rename(synced, path), synced


def test_a_retrain_report_syncs_its_folder(tmp_path, synced):
    path = write_report(RetrainReport(run_id="r1", deployment="d", decision="promoted"), tmp_path / "reports")
    assert _after_rename(synced, path), synced
