import json

import numpy as np
import pandas as pd
import pytest
import torch

from stream_ae.artifact import load_artifact, save_artifact
from stream_ae.data import History, Layout, WindowSpec, generate_plant, write_history
from stream_ae.drift import artifact_reference
from stream_ae.errors import ConfigError, DataError
from stream_ae.models import ModelConfig, build_model
from stream_ae.scoring import Scorer
from stream_ae.thresholds.base import ThresholdSpec, threshold_from_dict
from stream_ae.training import TrainConfig, WindowSet, fit_autoencoder, sample_windows, train

SPEC = WindowSpec(length=16, hop=2)
TINY = ModelConfig(kind="conv", hidden=8, latent=4)


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    df, _ = generate_plant(n_entities=2, n_channels=3, n_rows=1500, anomalies=False, seed=3)
    path = write_history(df, tmp_path_factory.mktemp("hist") / "plant")
    return df, History.open(path)


def _cfg(**kw):
    base = dict(epochs=3, batch_size=64, patience=5, max_windows=2000, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def test_time_split_has_no_leakage_and_windows_are_the_data(plant):
    df, history = plant
    train_set, val_set, stats = sample_windows(history, Layout(), SPEC, history.channels, 10_000, seed=0)
    assert len(train_set) > 0 and len(val_set) > 0
    assert train_set.end_ts.max() < val_set.start_ts.min()
    assert stats["windows"]["straddling"] > 0  # windows across the cut were dropped, not split
    assert set(train_set.entity) == set(val_set.entity) == {"unit_0", "unit_1"}
    # a window's rows are the readings of its entity from start_ts on
    for ws in (train_set, val_set):
        for b in (0, len(ws) // 2, len(ws) - 1):
            e = df[(df.entity == ws.entity[b]) & (df.timestamp.astype("int64") >= ws.start_ts[b])]
            np.testing.assert_array_equal(ws.windows[b], e[list(history.channels)].to_numpy()[:SPEC.length])
    # about val_fraction of the span is validation
    assert 0.1 < len(val_set) / (len(train_set) + len(val_set)) < 0.3


def test_sampling_is_bounded_and_spread_over_entities_and_time(plant):
    _, history = plant
    train_set, val_set, stats = sample_windows(history, Layout(), SPEC, history.channels, 100, seed=1)
    assert len(train_set) + len(val_set) <= 100
    assert stats["windows"]["stride"] > 1
    assert len(train_set.rows) <= len(train_set) * SPEC.length  # memory bounded by the sample
    counts = {e: int((train_set.entity == e).sum()) for e in ("unit_0", "unit_1")}
    assert min(counts.values()) >= 0.4 * max(counts.values())
    # the sample covers most of the training period
    span = train_set.end_ts.max() - train_set.start_ts.min()
    full = val_set.start_ts.min() - train_set.start_ts.min()
    assert span > 0.9 * full


def _arrays(seed=0, n=300):
    rng = np.random.default_rng(seed)
    base = np.sin(np.linspace(0, 60, n * 16 + 16))[:, None] * np.ones(3)
    w = np.lib.stride_tricks.sliding_window_view(base, 16, axis=0)[::16].transpose(0, 2, 1)
    return (w + 0.05 * rng.normal(size=w.shape)).astype(np.float32)[:n]


def _fit(seed, **kw):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(n_channels=3, window=16, hidden=8, latent=4))
    data = _arrays()
    hist = fit_autoencoder(model, data[:240], data[240:], _cfg(seed=seed, **kw))
    return model, hist


def test_same_seed_gives_bitwise_identical_weights():
    a, ha = _fit(0)
    b, hb = _fit(0)
    c, _ = _fit(1)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert ha["val_loss"] == hb["val_loss"]
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def test_training_reduces_the_loss():
    _, hist = _fit(0, epochs=6)
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    assert {"loss", "recon"} <= set(hist["parts"][0])


def test_early_stopping_stops_and_keeps_the_best_weights():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_channels=3, window=16, hidden=8, latent=4))
    up = np.ones((256, 16, 3), np.float32)
    down = -up[:64]  # the better the model fits `up`, the worse it does on `down`
    hist = fit_autoencoder(model, up, down, _cfg(epochs=40, patience=2, lr=1e-2))
    assert hist["stopped_early"] and hist["epochs_run"] < 40
    assert hist["epochs_run"] == hist["best_epoch"] + 2
    x = torch.from_numpy(down)
    with torch.inference_mode():
        restored = float(((model(x) - x) ** 2).mean())
    assert restored == pytest.approx(hist["best_val_loss"], rel=1e-5)
    assert restored < hist["val_loss"][-1]


def test_end_to_end_train_gives_a_calibrated_artifact(plant, tmp_path):
    _, history = plant
    art = train(history, Layout(), SPEC, TINY, _cfg(), ThresholdSpec(kind="evt", warmup=50))
    assert art.channels == history.channels and art.model.n_channels == 3 and art.model.window == 16
    assert art.threshold["state"] and art.threshold["spec"]["kind"] == "evt"
    assert threshold_from_dict(art.threshold).ready
    t = art.training
    assert t["rows"] == history.count_rows() and t["entities"] == ["unit_0", "unit_1"]
    assert t["span"]["first"] < t["cut"] < t["span"]["last"]
    assert t["windows"]["train"] > t["windows"]["val"] > 0 and t["epochs"] == 3
    assert np.isfinite(t["metrics"]["val_loss"]) and "0.99" in t["metrics"]["val_score_quantiles"]
    # the drift watch's starting level: the mean log score of the normal validation windows,
    # between the log of the median score and that of the threshold
    level = artifact_reference(art)
    assert level == t["metrics"]["val_log_score_mean"]
    assert np.log(t["metrics"]["val_score_quantiles"]["0.5"]) - 1.0 < level < np.log(t["metrics"]["threshold_value"])
    # the scaler saw the training split only (rows before the cut), not the validation rows
    df = plant[0]
    before_cut = int((df.timestamp < pd.Timestamp(t["cut"])).sum())
    assert 0.9 * before_cut <= art.scaler.count[0] <= before_cut
    path = save_artifact(art, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["training"]["span"] == t["span"]
    loaded = load_artifact(path)
    w = np.random.default_rng(0).normal(size=(8, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(Scorer(art, "cpu").score_windows(w).score,
                                  Scorer(loaded, "cpu").score_windows(w).score)


def test_too_few_windows_is_a_data_error_that_says_what_to_change(plant):
    _, history = plant
    with pytest.raises(DataError, match=r"too few windows.*found.*shorten the window \(--window\)"):
        train(history, Layout(), WindowSpec(length=1400), TINY, _cfg(), ThresholdSpec())


def test_train_config_is_validated():
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match="patience"):
        TrainConfig(patience=0)
    assert isinstance(WindowSet.from_windows(np.zeros((2, 4, 1))).windows, np.ndarray)


def test_train_resolves_detrend_names_to_the_datas_channel_positions(plant):
    _, history = plant
    last = history.channels[-1]
    art = train(history, Layout(), SPEC, TINY, _cfg(epochs=1), ThresholdSpec(kind="quantile", warmup=20),
                detrend=(last, history.channels[0]))
    assert art.model.detrend == (len(history.channels) - 1, 0)
    with pytest.raises(ConfigError, match=r"detrend names 'nope', not among the channels: "):
        train(history, Layout(), SPEC, TINY, _cfg(epochs=1), ThresholdSpec(), detrend=("nope",))


def test_train_flags_reach_the_preset():
    from stream_ae.cli import build_parser
    from stream_ae.commands import resolve_preset

    args = build_parser().parse_args(["train", "--history", "h", "--model", "conv",
                                      "--detrend", "Temperature, Thermocouple", "--score-steps", "12"])
    preset = resolve_preset(args.model, args.variant, detrend=args.detrend, score_steps=args.score_steps)
    assert preset.detrend == ("Temperature", "Thermocouple") and preset.model.score_steps == 12
    assert resolve_preset("conv", "undercomplete").model.score_steps == 20  # the preset's newest 20 of 60
    assert resolve_preset("conv", "undercomplete", window=10).model.score_steps == 10  # never beyond the window
