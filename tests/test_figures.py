"""Every picture the package draws leaves the caller's matplotlib alone: a notebook keeps its
backend and its open figures, and nothing is left registered with pyplot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_ae.errors import ConfigError
from stream_ae.figures import save

PNG = b"\x89PNG\r\n\x1a\n"


def _demo(path):
    from stream_ae.data.synthetic import InjectedAnomaly
    from stream_ae.demo.plot import plot_demo

    ts = np.arange(200, dtype=np.int64) * 10**10
    frame = dict(ts=ts, values=np.random.default_rng(0).normal(size=(200, 3)), channels=("a", "b", "c"),
                 score_ts=ts[59:], score=np.full(141, 1.0), threshold=np.full(141, 2.0))
    return plot_demo(path, {"u": frame}, [InjectedAnomaly("u", "spike", int(ts[90]), int(ts[95]), ("b",))], [], "t")


def _evaluation(path):
    from stream_ae.evaluation.plot import plot_file_run
    from stream_ae.evaluation.skab import FileRun

    n = 120
    flags = np.zeros(n, bool)
    run = FileRun("f", np.arange(n, dtype=np.int64) * 10**9, np.random.default_rng(1).normal(size=(n, 2)),
                  flags, flags, ~flags, np.linspace(0.1, 1.0, n), np.full(n, 0.5), flags, flags)
    return plot_file_run(run, path)


def _latency(path):
    from stream_ae.bench.latency_plot import plot_latency

    cores = {"t_s": [0.5, 1.0], "machine": [1.0, 1.2], "broker": [0.3, 0.4], "load_generator": [0.2, 0.2]}
    return plot_latency(path, {"sent_s": np.array([0.1, 0.9]), "ms": np.array([50.0, 250.0]), "cores": cores},
                        {"t_s": [0.25, 0.75], "p50": [5.0, 6.0], "p99": [9.0, 12.0]}, 200.0, "t")


def _soak(path):
    from stream_ae.bench.soak_plot import plot_soak

    return plot_soak(path, {"p": {"readings": [1e5, 2e5], "rss_mib": [300, 310], "heap_mib": [100, 101],
                                  "live": [10, 10], "parked": [0, 5]}}, "t")


def _report(path):
    from stream_ae.retraining.report import plot_scores

    rng = np.random.default_rng(2)
    return plot_scores(path, {"current": rng.lognormal(size=500), "candidate": rng.lognormal(size=500)},
                       {"current": 3.0, "candidate": None}, "t")


@pytest.mark.parametrize("draw", [_demo, _evaluation, _latency, _soak, _report])
def test_a_picture_keeps_the_callers_backend_and_figures(draw, tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("svg")  # stands in for a notebook's backend
    try:
        mine = plt.figure()
        png = draw(tmp_path / "sub" / "x.png")
        assert matplotlib.get_backend() == "svg"  # matplotlib.use("Agg") would switch it ...
        assert plt.get_fignums() == [mine.number]  # ... and close the caller's figure
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5_000
        assert [p.name for p in png.parent.iterdir()] == ["x.png"]  # no temporary file left
    finally:
        plt.close("all")
        plt.switch_backend(before)


def test_a_failed_save_leaves_neither_the_picture_nor_a_temporary_file(tmp_path):
    from stream_ae.figures import figure

    fig = figure()
    fig.subplots().plot([1, 2])

    def half_then_fail(path, **kwargs):   # the disk fills up halfway through the picture
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("No space left on device")

    fig.savefig = half_then_fail
    with pytest.raises(OSError):
        save(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError):   # a name that is no image format: refused before anything is written
        save(fig, tmp_path / "x.notaformat")
    assert list(tmp_path.iterdir()) == []
