"""A retrain whose history covers little of `retrain.train_span` fails instead of training on it.

An archiver that was down for most of the span used to leave a challenger trained silently on the
few minutes there were. Now the readings must cover `retrain.min_train_coverage` of the span, and
the report says what the challenger was trained on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stream_ae.data.history import History
from stream_ae.data.synthetic import generate_plant, write_history
from stream_ae.data.windows import WindowSpec
from stream_ae.errors import DataError
from stream_ae.retraining import run_retrain
from stream_ae.training.sampling import sample_windows
from test_retrain import GOOD, make_settings, report_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frame():
    df, _ = generate_plant(n_entities=2, n_channels=3, n_rows=3600, season_period=300, seed=3, anomalies=False)
    return df


@pytest.fixture(scope="module")
def late_archive(tmp_path_factory, frame):
    """The last 20 minutes of an hour: 40 minutes of train span hold their last 5 minutes only."""
    root = tmp_path_factory.mktemp("late")
    now = frame.timestamp.max() + pd.Timedelta(seconds=1)
    write_history(frame[frame.timestamp >= now - pd.Timedelta(minutes=20)], root / "history")
    return {"history": str(root / "history"), "now": now}


def test_a_train_span_mostly_without_readings_fails_and_says_why(tmp_path, late_archive):
    with pytest.raises(DataError) as err:
        run_retrain(make_settings(tmp_path, late_archive, *GOOD), now=late_archive["now"])
    text = str(err.value)
    assert "covers 12% of the period" in text and "less than the 50% required" in text
    assert "retrain.min_train_coverage" in text
    assert not list((tmp_path / "models").glob("*/manifest.json"))   # nothing trained, nothing published


def test_a_lowered_minimum_trains_and_the_report_says_on_what(tmp_path, late_archive):
    report = run_retrain(make_settings(tmp_path, late_archive, *GOOD, "retrain.min_train_coverage=0.1"),
                         now=late_archive["now"])
    assert report.decision == "promoted"
    training = report_file(report)["training"]
    assert training["rows"] == 2 * 300 and training["entities"] == 2
    assert training["coverage"] == pytest.approx(0.125, abs=0.01)
    first = pd.Timestamp(training["span"]["first"])   # 5 minutes before the holdout
    assert first == pd.Timestamp(report.train_span[1]) - pd.Timedelta(minutes=5)


def test_an_outage_inside_the_span_lowers_its_coverage(tmp_path, frame):
    t0 = frame.timestamp.min()
    outage = (frame.timestamp >= t0 + pd.Timedelta(minutes=20)) & (frame.timestamp < t0 + pd.Timedelta(minutes=35))
    write_history(frame[~outage], tmp_path / "history")
    history = History.open(str(tmp_path / "history"))
    spec = WindowSpec(length=16, hop=1)
    args = (history, history.layout, spec, history.channels, 2000, 0)
    *_, stats = sample_windows(*args, start=str(t0), end=str(t0 + pd.Timedelta(hours=1)))
    assert stats["coverage"] == pytest.approx(0.75, abs=0.01)
    *_, stats = sample_windows(*args)   # no period: first to last reading, the same outage
    assert stats["coverage"] == pytest.approx(0.75, abs=0.01)
    with pytest.raises(DataError, match="covers 75% of the period"):
        sample_windows(*args, min_coverage=0.8)
    assert np.isclose(sample_windows(*args, min_coverage=0.7)[2]["coverage"], stats["coverage"])
