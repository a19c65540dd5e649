"""What training does with an archive that is not what it seems: rows out of time order,
repeated timestamps, outages the windows would join across, and inputs that cannot fit.

Each case used to train without a word (unsorted rows were dropped, gaps were learned as
normal) or to stop with an error that pointed elsewhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_ae.data.history import History
from stream_ae.data.layout import Layout
from stream_ae.data.synthetic import generate_plant, write_history
from stream_ae.data.windows import WindowSpec
from stream_ae.errors import ConfigError, DataError
from stream_ae.models import build_model
from stream_ae.thresholds import ThresholdSpec
from stream_ae.training import WindowSet, fit_autoencoder, sample_windows, train
from stream_ae.training import checks
from test_training import TINY, _cfg

SPEC = WindowSpec(length=16)


def _plant(n_rows=2000, seed=3):
    df, _ = generate_plant(n_entities=2, n_channels=3, n_rows=n_rows, anomalies=False, seed=seed)
    return df


def _write(df, folder, name):
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / name)


def test_an_archive_whose_files_are_out_of_time_order_is_refused(tmp_path):
    """part-10 holds the later half and is read first (path order): its earlier half was dropped."""
    df = _plant()
    mid = df.timestamp.iloc[len(df) // 2]
    _write(df[df.timestamp < mid], tmp_path / "a", "part-2.parquet")
    _write(df[df.timestamp >= mid], tmp_path / "a", "part-10.parquet")
    history = History.open(str(tmp_path / "a"))
    with pytest.raises(DataError, match=r"part-2\.parquet: entity '.*' has \d+ reading\(s\) older than an earlier "
                                        r"one .*must be sorted .*zero-pad numbers"):
        sample_windows(history, Layout(), SPEC, history.channels, 100_000, seed=0)


def test_repeated_timestamps_are_dropped_and_counted(tmp_path):
    df = _plant()
    df = pd.concat([df, df.iloc[[100, 101, 102]]]).sort_values(["entity", "timestamp"], kind="stable")
    _write(df, tmp_path / "a", "all.parquet")
    history = History.open(str(tmp_path / "a"))
    _, _, stats = sample_windows(history, Layout(), SPEC, history.channels, 100_000, seed=0)
    assert stats["duplicates_dropped"] == 3


def _with_outage(n_rows=3000, outage_rows=600):
    """1 s readings with a 10-minute hole in the middle of the training split."""
    df, _ = generate_plant(n_entities=1, n_channels=3, n_rows=n_rows, anomalies=False, seed=5)
    return df.drop(index=range(1000, 1000 + outage_rows)).reset_index(drop=True)


def test_windows_that_join_readings_across_an_outage_are_a_warning(tmp_path):
    path = write_history(_with_outage(), tmp_path / "plant")
    art = train(path, Layout(), SPEC, TINY, _cfg(epochs=1), ThresholdSpec())
    gaps = art.training["gaps"]
    assert gaps["bridged"] == 1 and gaps["longest_s"] == pytest.approx(601.0) and gaps["median_step_s"] == 1.0
    [warning] = [w for w in art.training["warnings"] if w.startswith("the history has 1 gap(s)")]
    assert "the longest 601 s" in warning and "Pass --max-gap SECONDS (e.g. 10)" in warning


def test_no_gap_warning_when_windows_break_at_gaps_or_there_are_none(tmp_path):
    history = History.open(write_history(_with_outage(), tmp_path / "plant"))
    broken = dataclasses.replace(SPEC, max_gap_s=5.0)
    _, _, stats = sample_windows(history, Layout(), broken, history.channels, 100_000, seed=0)
    assert stats["gaps"]["bridged"] == 0 and checks.gap_warnings(stats["gaps"]) == []
    clean = History.open(write_history(_plant(), tmp_path / "clean"))
    _, _, stats = sample_windows(clean, Layout(), SPEC, clean.channels, 100_000, seed=0)
    assert stats["gaps"]["bridged"] == 0 and checks.gap_warnings(stats["gaps"]) == []


def _windows(n=64, length=16, channels=3, seed=0):
    return WindowSet.from_windows(np.random.default_rng(seed).normal(size=(n, length, channels)).astype(np.float32))


def test_fit_autoencoder_refuses_validation_windows_of_another_length():
    model = build_model(dataclasses.replace(TINY, n_channels=3, window=16))
    with pytest.raises(DataError, match="validation windows have 32 steps and training windows 16"):
        fit_autoencoder(model, _windows(), _windows(length=32), _cfg(epochs=1))


def test_fit_autoencoder_names_nan_in_its_windows_not_divergence():
    model = build_model(dataclasses.replace(TINY, n_channels=3, window=16))
    bad = _windows()
    bad.rows[5, 1] = np.nan
    with pytest.raises(DataError, match="the training windows hold NaN or infinite values"):
        fit_autoencoder(model, bad, _windows(seed=1), _cfg(epochs=1))


def test_the_preset_holds_out_what_training_holds_out():
    """``Preset.val_fraction`` (read by the SKAB evaluation) and ``TrainConfig.val_fraction``
    (read by training) were two settings that could disagree."""
    from stream_ae.presets import get_preset

    preset = get_preset("conv")
    changed = preset.replace(train=dataclasses.replace(preset.train, val_fraction=0.5))
    assert changed.val_fraction == 0.5 == changed.to_dict()["val_fraction"]


def test_max_windows_of_one_is_refused_where_it_is_set():
    with pytest.raises(ConfigError, match="TrainConfig.max_windows must be >= 2, got 1"):
        _cfg(max_windows=1)


def test_integer_epoch_timestamps_train_from_the_cli_with_time_unit(tmp_path, capsys):
    from stream_ae.cli import main

    df = _plant(n_rows=1500)
    df["timestamp"] = df.timestamp.astype("int64") // 10**9   # epoch seconds
    _write(df, tmp_path / "a", "all.parquet")
    flags = ["train", "--history", str(tmp_path / "a"), "--out", str(tmp_path / "models"), "--model", "lstm",
             "--epochs", "1", "--max-windows", "2000", "--no-progress"]
    assert main(flags) == 1
    assert "--time-unit s|ms|us|ns" in capsys.readouterr().err
    assert main(flags + ["--time-unit", "s"]) == 0


def test_backfill_column_flags_keep_the_model_columns_they_do_not_name(tmp_path, capsys):
    """``--channels`` alone replaced the model's timestamp column with 'timestamp'."""
    from stream_ae.cli import main

    df = _plant(n_rows=1200).rename(columns={"timestamp": "ts"})
    _write(df, tmp_path / "a", "all.parquet")
    assert main(["train", "--history", str(tmp_path / "a"), "--out", str(tmp_path / "models"), "--model", "lstm",
                 "--time-col", "ts", "--epochs", "1", "--no-progress"]) == 0
    model = next((tmp_path / "models").iterdir())
    assert main(["backfill", "--archive", str(tmp_path / "a"), "--model", str(model), "--out", str(tmp_path / "s"),
                 "--channels", "ch_0,ch_1,ch_2", "--device", "cpu", "--no-progress"]) == 0
    assert "backfill shard 0/1 complete" in capsys.readouterr().out
