"""A model trained on data with a few extreme readings says so: it used to be saved silently,
blind to a channel or with a threshold that flags nothing."""

from __future__ import annotations

import re

import pytest

from stream_ae.data.synthetic import generate_plant, write_history
from stream_ae.data.windows import WindowSpec
from stream_ae.data.layout import Layout
from stream_ae.errors import ConfigError
from stream_ae.thresholds import ThresholdSpec
from stream_ae.training import train
from test_training import TINY, _cfg


def _train(tmp_path, edit=None):
    df, _ = generate_plant(n_entities=1, n_channels=3, n_rows=3000, anomalies=False, seed=5)
    if edit is not None:
        edit(df)
    path = write_history(df, tmp_path / "plant")
    return train(path, Layout(), WindowSpec(length=16), TINY, _cfg(epochs=2), ThresholdSpec())


def test_clean_data_gives_no_warning(tmp_path):
    assert _train(tmp_path).training["warnings"] == []


def test_an_extreme_training_reading_that_blinds_its_channel_is_a_warning(tmp_path, caplog):
    def error_code(df):
        df.loc[500, "ch_0"] = 1e25   # in the training split (the first 80 %)

    art = _train(tmp_path, error_code)
    assert len(art.training["warnings"]) == 1 and art.training["warnings"][0].startswith("channel 'ch_0'")
    assert "a fault on it will not show" in caplog.text


def test_a_threshold_fitted_to_a_few_outlying_validation_windows_is_a_warning(tmp_path):
    def spike(df):
        df.loc[2900, "ch_1"] = 1e6   # in the validation split: its windows become the EVT tail

    warnings = _train(tmp_path, spike).training["warnings"]
    assert any(w.startswith("the threshold (") and "flag almost nothing" in w for w in warnings)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_out_of_range_is_a_config_error(seed):
    with pytest.raises(ConfigError, match=r"seed must lie in \[0, 2\*\*32\)"):
        _cfg(seed=seed)


def test_flags_that_cannot_work_stop_before_the_work(tmp_path, capsys):
    """Each of these ran its whole training or evaluation first, or gave a misleading error."""
    from stream_ae.cli import main
    from stream_ae.models.config import ModelConfig

    with pytest.raises(ConfigError, match="detrend needs windows of at least 3 readings"):
        ModelConfig(kind="lstm", n_channels=2, window=2, detrend=(0,))
    taken = tmp_path / "history.parquet"
    taken.write_bytes(b"PAR1")
    assert main(["train", "--history", str(taken), "--model", "conv", "--out", str(taken), "--no-progress"]) == 2
    assert "--out" in capsys.readouterr().err
    for extra, message in ((["--model", ","], "--model and --variant each need at least one name"),
                           (["--json", str(tmp_path / "nowhere" / "r.json")], "--json .*does not exist")):
        assert main(["evaluate", "skab", "--data", str(tmp_path), *extra]) == 2
        assert re.search(message, capsys.readouterr().err)


def test_evaluate_seed_reaches_every_training_and_is_checked_first(tmp_path, monkeypatch, capsys):
    """The README's seed table is reproducible from the command line (it took a script)."""
    import stream_ae.evaluation.skab as skab
    from stream_ae.cli import main

    seen = {}
    monkeypatch.setattr(skab, "evaluate", lambda *a, **kw: seen.update(kw) or {})
    assert main(["evaluate", "skab", "--data", str(tmp_path), "--seed", "3", "--no-progress"]) == 0
    assert seen["seed"] == 3
    assert main(["evaluate", "skab", "--data", str(tmp_path), "--seed", str(2**32)]) == 2
    assert "--seed must lie in [0, 2**32), got 4294967296" in capsys.readouterr().err


def test_too_few_windows_because_one_channel_is_mostly_missing_names_that_channel(tmp_path):
    from stream_ae.errors import DataError

    def sensor_offline(df):
        df.loc[::7, "ch_2"] = float("nan")   # a gap in every 16-reading window: none survives
        df.loc[1000:, "ch_2"] = float("nan")

    with pytest.raises(DataError, match=r"too few windows .*'ch_2' has no value in 7\d %.*--channels"):
        _train(tmp_path, sensor_offline)
