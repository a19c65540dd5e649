"""A retrain stopped by an error that is not one of ours still leaves a ``failed`` report.

An operator reads the report folder to learn why last night's run did not promote. A registry
on a network disk that goes away (``OSError``), or CUDA out of memory (``RuntimeError``), used
to end the run with no report at all.
"""

from __future__ import annotations

import json

import pytest

import stream_ae.retraining.job as job
from stream_ae.retraining import run_retrain
from test_retrain import GOOD, make_settings, plant  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("error", [OSError(5, "Input/output error", "/mnt/models/x"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_an_unforeseen_error_writes_a_failed_report_and_is_raised(tmp_path, plant, monkeypatch, error):  # noqa: F811
    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(job, "_train_and_publish", fails)
    with pytest.raises(type(error)):
        run_retrain(make_settings(tmp_path, plant, *GOOD), now=plant["now"])
    reports = list((tmp_path / "reports").glob("*.json"))
    assert len(reports) == 1
    saved = json.loads(reports[0].read_text())
    assert saved["decision"] == "failed" and saved["finished_at"]
    assert type(error).__name__ in saved["error"] and str(error.args[-1]) in saved["error"]


def test_the_job_exits_1_on_a_registry_os_error_with_its_report_written(tmp_path, plant, monkeypatch,  # noqa: F811
                                                                      capsys):
    import jobs.retrain

    def fails(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(job, "_train_and_publish", fails)
    overrides = [f"model.registry={tmp_path / 'models'}", "retrain.deployment=prod",
                 f"retrain.history={plant['history']}", f"retrain.report_dir={tmp_path / 'reports'}",
                 "retrain.train_span=40m", "retrain.holdout_span=15m", "retrain.align=1s", "retrain.window=16",
                 "retrain.device=cpu", *GOOD]
    argv = [a for o in overrides for a in ("--set", o)] + ["--now", str(plant["now"])]
    assert jobs.retrain.main(argv) == 1
    assert "No space left on device" in capsys.readouterr().err
    saved = json.loads(next((tmp_path / "reports").glob("*.json")).read_text())
    assert saved["decision"] == "failed" and "No space left on device" in saved["error"]

