"""A model that cannot serve is refused where it is loaded, and a load that fails in an unexpected
way is backed off and counted like any other (a review of the hot-reload path, session 33)."""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from stream_ae.artifact import load_artifact, save_artifact
from stream_ae.data.windows import WindowSpec
from stream_ae.errors import ArtifactError, DataError
from stream_ae.scoring import Scorer
from stream_ae.stream.metrics import StreamMetrics
from stream_ae.stream.serve import ModelWatcher
from test_model_watcher import _until, deployed  # noqa: F401  (fixture)
from test_registry import tiny_artifact


def _edited(tmp_path, edit):
    path = save_artifact(tiny_artifact(0), tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_manifest_whose_channels_are_not_a_list_of_names_is_an_artifact_error(tmp_path):
    path = _edited(tmp_path, lambda m: m.update(channels=5))
    with pytest.raises(ArtifactError, match="'channels' must be a list of names, got 5"):
        load_artifact(path)


def test_an_artifact_whose_window_spec_disagrees_with_its_model_is_refused(tmp_path):
    path = _edited(tmp_path, lambda m: m["window"].update(length=16))
    with pytest.raises(ArtifactError, match="windows of 16 readings but a model of 8"):
        load_artifact(path)


def test_a_swap_to_such_a_model_changes_nothing_in_the_detector():
    from test_stream_detector import make_detector

    art = tiny_artifact(0)
    detector = make_detector(Scorer(art, device="cpu"))
    before = (detector.scorer, detector.window_spec)
    odd = Scorer(dataclasses.replace(tiny_artifact(1), window=WindowSpec(length=16)), device="cpu")
    with pytest.raises(DataError, match=r"windows of 8 rows \(its window spec 16\)"):
        detector.swap_scorer(odd)
    assert (detector.scorer, detector.window_spec) == before


def test_an_unexpected_error_while_loading_is_backed_off_counted_and_logged(deployed, monkeypatch, caplog):
    """A CUDA out-of-memory while the old model holds the GPU used to be retried at every
    watcher call, counted nowhere and printed only by the thread's excepthook."""
    reg, (v1, v2, _), settings = deployed
    watcher = ModelWatcher(settings)
    watcher.initial()
    watcher.metrics = StreamMetrics()
    calls = []

    def out_of_memory(artifact):
        calls.append(artifact.version)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(watcher, "_scorer", out_of_memory)
    reg.promote("prod", v2)
    with caplog.at_level(logging.ERROR, logger="stream_ae.stream.serve"):
        watcher()
        _until(lambda: watcher._loading is None and calls)
        for _ in range(5):
            watcher()   # within the back-off: not tried again
    assert calls == [v2] and v2 in watcher._failed and watcher.version == v1
    assert watcher.metrics.sample("stream_ae_model_reload_failures_total") == 1.0
    assert "CUDA out of memory" in caplog.text and "keeping model" in caplog.text
