"""The model's view of a window (detrended channels) and the steps its score covers.

Both are part of the model config, so training, the Scorer (stream, backfill, evaluation) and
a saved artifact all read windows the same way.
"""
import dataclasses

import numpy as np
import pytest
import torch

from stream_ae.artifact import Artifact, load_artifact, make_version, save_artifact, utc_now, weights_bytes
from stream_ae.data.layout import Layout
from stream_ae.data.windows import WindowSpec
from stream_ae.errors import ConfigError
from stream_ae.models import ModelConfig, build_model, window_errors
from stream_ae.models.base import detrend_channels
from stream_ae.models.config import channel_indices
from stream_ae.scaling import ChannelScaler
from stream_ae.scoring import Scorer
from test_artifact import real_calibration

T, C = 24, 4
CHANNELS = ("flow", "temp", "vib", "current")


def _artifact(kind="conv", detrend=(1,), score_steps=0, seed=0) -> Artifact:
    torch.manual_seed(seed)
    config = ModelConfig(kind=kind, n_channels=C, window=T, hidden=8, latent=4, detrend=detrend,
                         score_steps=score_steps)
    state = build_model(config).state_dict()
    rows = _rows(seed=9)
    created = utc_now()
    return Artifact(
        version=make_version(config, created, weights_bytes(state)), model=config,
        window=WindowSpec(length=T), layout=Layout(channels=CHANNELS), channels=CHANNELS,
        scaler=ChannelScaler().fit(rows), threshold=real_calibration(), training={},
        state_dict=state, created_at=created)


def _rows(n=400, seed=1):
    return np.random.default_rng(seed).normal(10, 3, size=(n, C)).astype(np.float32)


def test_detrending_removes_each_windows_line_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, T, C, generator=g)
    t = torch.arange(T, dtype=torch.float32)[None, :, None]
    ramp = torch.randn(5, 1, C, generator=g) + torch.randn(5, 1, C, generator=g) * t  # a line per window
    mask = torch.tensor([0.0, 1.0, 0.0, 1.0])
    out, shifted = detrend_channels(x, mask), detrend_channels(x + ramp, mask)
    torch.testing.assert_close(out[..., [1, 3]], shifted[..., [1, 3]], atol=1e-4, rtol=0)  # the line is gone
    torch.testing.assert_close(out[..., [0, 2]], x[..., [0, 2]])  # other channels untouched
    centred_time = t - (T - 1) / 2
    assert out[..., [1, 3]].mean(dim=1).abs().max() < 1e-5  # no level left ...
    assert (out[..., [1, 3]] * centred_time).sum(dim=1).abs().max() < 1e-3  # ... and no slope


@pytest.mark.parametrize("kind", ["conv", "lstm"])
def test_scores_ignore_a_drift_on_a_detrended_channel_only(kind):
    """A ramp on 'temp' (detrended) leaves every score as it was; the same ramp on 'flow' does not."""
    scorer = Scorer(_artifact(kind, detrend=(1,)), device="cpu")
    rows = _rows()
    starts = np.arange(0, len(rows) - T + 1, 3, dtype=np.int64)
    drift = (0.05 * np.arange(len(rows)) + 4.0).astype(np.float32)  # 20 units over the span, a slow ramp
    on_temp, on_flow = rows.copy(), rows.copy()
    on_temp[:, 1] += drift
    on_flow[:, 0] += drift
    base = scorer.score_rows(rows, starts)
    np.testing.assert_allclose(scorer.score_rows(on_temp, starts).score, base.score, rtol=2e-4, atol=1e-5)
    assert np.abs(scorer.score_rows(on_flow, starts).score - base.score).max() > 0.1


def test_training_reads_the_same_view_as_scoring():
    model = build_model(ModelConfig(n_channels=C, window=T, hidden=8, latent=4, detrend=(1, 3))).eval()
    x = torch.randn(6, T, C)
    ramp = torch.zeros_like(x)
    ramp[..., 1] = 3.0 + 0.5 * torch.arange(T)
    with torch.no_grad():
        a, b = model.training_loss(x)[0], model.training_loss(x + ramp)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "lstm"])
def test_a_window_is_scored_by_its_newest_steps(kind):
    art = _artifact(kind, detrend=(), score_steps=5)
    scorer = Scorer(art, device="cpu")
    rows = _rows()
    starts = np.array([0, 7, 100, 376], dtype=np.int64)
    got = scorer.score_rows(rows, starts)
    x = torch.from_numpy(art.scaler.transform(np.stack([rows[s:s + T] for s in starts])))
    with torch.inference_mode():
        sq = (scorer.model(x) - x) ** 2  # (B, T, C)
    np.testing.assert_allclose(got.channel_error, sq[:, -5:].mean(dim=1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.score, sq[:, -5:].mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(got.score, sq.mean(dim=(1, 2)).numpy(), rtol=1e-3)  # not the whole window
    # a fault in the oldest readings only: it dominates the whole-window score and barely moves
    # the newest-5 score (only through the model's receptive field: the code summarises the window)
    bad = rows.copy()
    bad[100:103] += 50.0
    whole = Scorer(_artifact(kind, detrend=(), score_steps=0), device="cpu")
    rise_whole = whole.score_rows(bad, starts[2:3]).score[0] / whole.score_rows(rows, starts[2:3]).score[0]
    rise_newest = scorer.score_rows(bad, starts[2:3]).score[0] / got.score[2]
    assert rise_whole > 10 and rise_newest < rise_whole / 5, (rise_whole, rise_newest)


def test_the_model_errors_method_is_the_scorers_numbers():
    art = _artifact("conv", detrend=(0, 2), score_steps=7)
    scorer = Scorer(art, device="cpu")
    rows = _rows()
    starts = np.arange(0, 300, 11, dtype=np.int64)
    x = torch.from_numpy(art.scaler.transform(np.stack([rows[s:s + T] for s in starts])))
    score, channel = scorer.model.errors(x)
    got = scorer.score_rows(rows, starts)
    np.testing.assert_allclose(got.score, score.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.channel_error, channel.numpy(), rtol=1e-5, atol=1e-7)


def test_a_saved_artifact_keeps_its_view_and_scores(tmp_path):
    art = _artifact("conv", detrend=(1, 3), score_steps=9)
    loaded = load_artifact(save_artifact(art, tmp_path))
    assert loaded.model.detrend == (1, 3) and loaded.model.score_steps == 9
    rows, starts = _rows(), np.arange(0, 350, 5, dtype=np.int64)
    np.testing.assert_array_equal(Scorer(loaded, device="cpu").score_rows(rows, starts).score,
                                  Scorer(art, device="cpu").score_rows(rows, starts).score)


def test_an_artifact_without_the_new_fields_loads_with_the_old_behaviour():
    d = ModelConfig(n_channels=C, window=T).to_dict()
    del d["detrend"], d["score_steps"]  # a manifest written before these settings existed
    cfg = ModelConfig.from_dict(d)
    assert cfg.detrend == () and cfg.score_steps == 0


@pytest.mark.parametrize("change, message", [
    (dict(detrend=(4,)), "detrend must list channel indices in [0, 3]"),
    (dict(detrend=(1, 1)), "detrend names a channel twice"),
    (dict(score_steps=T + 1), "score_steps must be an integer in [0, window=24]"),
    (dict(score_steps=-1), "score_steps must be an integer"),
])
def test_invalid_settings_say_what_is_valid(change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dataclasses.replace(ModelConfig(n_channels=C, window=T), **change)


def test_channel_names_resolve_to_positions_or_say_which_exist():
    assert channel_indices(("temp", "current"), CHANNELS) == (1, 3)
    with pytest.raises(ConfigError, match="detrend names 'Temp', not among the channels: flow, temp, vib, current"):
        channel_indices(("Temp",), CHANNELS)


def test_window_errors_last_steps():
    x = torch.zeros(1, 4, 2)
    recon = x.clone()
    recon[0, :2] = 2.0
    assert window_errors(x, recon)[0].item() == 2.0 and window_errors(x, recon, last=2)[0].item() == 0.0
