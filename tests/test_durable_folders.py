"""A new folder's name is synced into its parent on a local disk, before files are published in it.

Before: the archiver's new ``date=``/``entity=`` folders (and the backfill's, the registry's)
were made with ``create_dir`` alone: a power cut could lose the folder with the files already
published in it, after the marker had moved past their rows."""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from stream_ae import durable
from stream_ae.backfill.output import write_bytes_atomic


def record_fsyncs(monkeypatch) -> list[str]:
    synced = []
    real = durable.fsync
    monkeypatch.setattr(durable, "fsync", lambda path: (synced.append(os.path.abspath(path)), real(path)))
    return synced


def test_each_new_folder_is_synced_into_its_parent_from_the_top(tmp_path, monkeypatch):
    synced = record_fsyncs(monkeypatch)
    durable.create_dir_on(pafs.LocalFileSystem(), str(tmp_path / "date=2026-01-01" / "entity=a"))
    assert synced == [str(tmp_path), str(tmp_path / "date=2026-01-01")]
    synced.clear()
    durable.create_dir_on(pafs.LocalFileSystem(), str(tmp_path / "date=2026-01-01"))   # there already
    assert synced == []


def test_a_checkpoint_in_a_new_folder_syncs_the_folder_and_then_itself(tmp_path, monkeypatch):
    synced = record_fsyncs(monkeypatch)
    write_bytes_atomic(pafs.LocalFileSystem(), str(tmp_path / "_checkpoints" / "shard-0-of-1.json"), b"{}")
    assert synced[0] == str(tmp_path)                              # the new folder's name, first
    assert synced[-1] == str(tmp_path / "_checkpoints")            # the rename, last
    assert (tmp_path / "_checkpoints" / "shard-0-of-1.json").read_bytes() == b"{}"


def test_the_archivers_files_go_through_it(tmp_path, monkeypatch):
    import pyarrow as pa

    from stream_ae.archiver.writer import ArchiveWriter

    made = []
    real = durable.create_dir_on
    monkeypatch.setattr(durable, "create_dir_on", lambda fs, d: (made.append(d), real(fs, d)))
    w = object.__new__(ArchiveWriter)   # only the file writing: its filesystem and compression
    w.fs, w.compression = pafs.LocalFileSystem(), "none"
    w._write_parquet(str(tmp_path / "date=2026-01-01" / "part.parquet"), pa.table({"x": [1]}))
    assert made == [str(tmp_path / "date=2026-01-01")]
    assert (tmp_path / "date=2026-01-01" / "part.parquet").exists()
