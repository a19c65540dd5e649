"""The archiver's markers as a reader of the archive sees them: the files of a flush that did not finish.

The archiver (``stream_ae/archiver/writer.py``) lists the files of a flush in its partition's
marker (``_archiver/<topic>/<partition>.json``, ``pending``) before it writes them, and empties
the list once they are all durable. A crash in between leaves those written so far visible
until the archiver's recovery deletes them and archives their records again, cut at other
offsets, under other names: a reader that took them meanwhile (training, a backfill of the live
archive, the retrain job) would read those rows twice. :class:`~stream_ae.data.history.History`
leaves them out.
"""
from __future__ import annotations

import json
import posixpath
from typing import Sequence

import pyarrow.fs as pafs

MARKER_DIR = "_archiver"  # under the archive root; a name starting with "_", which dataset listings skip


def pending_files(filesystem: pafs.FileSystem, base: str) -> set[str]:
    """The files (as ``base`` joins them) that a marker under ``base`` lists as pending.

    >>> pending_files(pafs.LocalFileSystem(), "/nonexistent-archive")
    set()
    """
    selector = pafs.FileSelector(posixpath.join(base, MARKER_DIR), recursive=True, allow_not_found=True)
    out: set[str] = set()
    for info in filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json") or info.base_name.startswith("_"):
            continue
        try:
            with filesystem.open_input_stream(info.path) as f:
                pending = json.loads(f.read()).get("pending") or ()
            out.update(posixpath.join(base, str(rel)) for rel in pending)
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # replaced while read, or no marker: the archiver itself says what is wrong with one
    return out


def without_pending(files: Sequence[str], filesystem: pafs.FileSystem, base: str) -> list[str]:
    """``files`` less those of a flush the archiver has not finished."""
    pending = pending_files(filesystem, base)
    return [f for f in files if f not in pending] if pending else list(files)
