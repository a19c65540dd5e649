"""Writes that survive a power cut on a local disk, not only a crash of the process.

A rename publishes a file whole, but only the data synced before it and the folder synced
after it are sure to be on the disk: without the first, a power cut can leave the new name
on an empty file; without the second, the old name. Object stores need neither (a PUT is
visible whole), so callers use these on local paths only.

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / ".new").write_text("v2")
>>> publish(folder / ".new", folder / "pointer.json")
>>> (folder / "pointer.json").read_text(), (folder / ".new").exists()
('v2', False)
"""
from __future__ import annotations

import os

import pyarrow.fs as pafs


def fsync(path: str | os.PathLike) -> None:
    """Flush a file or a folder, named by its path, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the fully written ``tmp`` over ``path`` durably: sync it, rename, sync the folder."""
    fsync(tmp)
    os.replace(tmp, path)
    fsync(os.path.dirname(os.fspath(path)) or ".")


def create_dir_on(fs: pafs.FileSystem, directory: str) -> None:
    """``directory`` and its missing parents on ``fs``; on a local disk each new folder's name is
    synced into its parent, else a power cut could lose a new ``date=`` folder with the files
    already published in it (and the marker that moved past their rows would not bring them back).

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> create_dir_on(pafs.LocalFileSystem(), root + "/date=2026-01-01/entity=a")
    >>> os.path.isdir(root + "/date=2026-01-01/entity=a")
    True
    """
    if not isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(directory, recursive=True)
        return
    new, d = [], os.path.abspath(directory)
    while not os.path.isdir(d) and os.path.dirname(d) != d:
        new.append(d)
        d = os.path.dirname(d)
    os.makedirs(directory, exist_ok=True)
    for made in reversed(new):   # from the top: each name into its parent
        fsync(os.path.dirname(made))


def publish_on(fs: pafs.FileSystem, tmp: str, path: str) -> None:
    """Rename the fully written ``tmp`` over ``path`` on ``fs``: durably (:func:`publish`) on a
    local disk; on an object store closing the stream was the upload, and a move the rename."""
    if isinstance(fs, pafs.LocalFileSystem):
        publish(tmp, path)
    else:
        fs.move(tmp, path)
