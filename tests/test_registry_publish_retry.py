"""On an object store a publish writes the weights, then the manifest. One cut off between the
two left a version that no listing shows and that a retry refused as 'already exists'."""
from __future__ import annotations

import pytest

from stream_ae.errors import ArtifactError
from stream_ae.registry import Registry
from test_registry import tiny_artifact


def test_a_publish_cut_off_before_its_manifest_can_be_retried(tmp_path, monkeypatch):
    import pyarrow.fs as pafs
    from pyarrow.fs import _MockFileSystem

    reg = Registry("bucket/models", filesystem=_MockFileSystem(), cache_dir=str(tmp_path / "cache"))
    art = tiny_artifact(0)
    real, copied = pafs.copy_files, []

    def cut_off(source, destination, **kw):
        if destination.endswith("manifest.json"):
            raise OSError("connection reset by peer")
        copied.append(destination)
        return real(source, destination, **kw)

    monkeypatch.setattr(pafs, "copy_files", cut_off)
    with pytest.raises(OSError):
        reg.publish(art)
    assert copied and reg.versions() == []
    monkeypatch.setattr(pafs, "copy_files", real)
    assert reg.publish(art) == art.version  # the retry
    assert [v["version"] for v in reg.versions()] == [art.version]
    with pytest.raises(ArtifactError, match="already exists"):
        reg.publish(art)  # a whole version is still never overwritten
