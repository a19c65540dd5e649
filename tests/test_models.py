"""Contract tests over every model kind x variant, and ModelConfig validation."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load, save

from stream_ae.errors import ConfigError
from stream_ae.models import (
    KINDS, VARIANTS, Autoencoder, ConvAutoencoder, LstmAutoencoder, ModelConfig, build_model, window_errors,
)

T, C = 24, 3
STEPS = 200
VARIANT_TERM = {"undercomplete": None, "denoising": None, "sparse": "sparsity",
                "contractive": "contractive", "variational": "kl"}


def sine_windows(n: int, seed: int) -> torch.Tensor:
    """(n, T, C) normal windows: channels share a random phase and amplitude, fixed frequencies."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T).float()[None, :, None]
    freq = 0.3 + 0.15 * torch.arange(C).float()
    phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi + torch.arange(C).float()
    amp = 0.75 + 0.5 * torch.rand(n, 1, 1, generator=g)
    return amp * torch.sin(freq * t + phase) + 0.05 * torch.randn(n, T, C, generator=g)


def small_config(kind: str, variant: str) -> ModelConfig:
    size = {"hidden": 8, "latent": 4} if kind == "conv" else {"hidden": 16, "latent": 8}
    # conv covers L1 sparsity, lstm the KL form
    return ModelConfig(kind=kind, variant=variant, n_channels=C, window=T, dropout=0.1,
                       sparsity="l1" if kind == "conv" else "kl", **size)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=[(k, v) for k in KINDS for v in VARIANTS], ids=lambda p: f"{p[0]}-{p[1]}")
def trained(request):
    """A small model of one kind x variant, its held-out loss before training, and after a short training."""
    kind, variant = request.param
    torch.manual_seed(0)
    model = build_model(small_config(kind, variant))
    train, test = sine_windows(512, seed=1), sine_windows(300, seed=2)
    model.eval()
    before = model.errors(test)[0].mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(STEPS):
        loss, parts = model.training_loss(train[torch.randint(0, len(train), (32,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, test, before, parts


class TestModelContract:
    def test_output_shape_matches_input_for_any_length(self, trained):
        model, *_ = trained
        with torch.inference_mode():
            for length in (5, T, T + 1, 61):
                x = torch.randn(4, length, C)
                recon = model(x)
                assert recon.shape == x.shape
                score, channel_error = window_errors(x, recon)
                assert score.shape == (4,) and channel_error.shape == (4, C)
                assert torch.isfinite(score).all()

    def test_training_reduces_reconstruction_error(self, trained):
        model, test, before, _ = trained
        after = model.errors(test)[0].mean().item()
        assert after < 0.25 * before, f"held-out MSE {before:.3f} -> {after:.3f}"

    @pytest.mark.parametrize("anomaly", ["spike", "level_shift"])
    def test_injected_anomaly_scores_above_normal_99th_percentile(self, trained, anomaly):
        model, test, *_ = trained
        normal = model.errors(test)[0]
        bad = test[:20].clone()
        if anomaly == "spike":
            bad[:, T // 2, 1] += 5.0
        else:
            bad[:, T // 2:, 1] += 3.0
        score, channel_error = model.errors(bad)
        assert score.min() > normal.quantile(0.99)
        assert (channel_error.argmax(dim=1) == 1).all(), "the per-channel error should point at the broken channel"

    def test_eval_forward_is_deterministic(self, trained):
        model, test, *_ = trained
        with torch.inference_mode():
            assert torch.equal(model(test[:16]), model(test[:16]))

    def test_safetensors_round_trip_gives_identical_scores(self, trained):
        model, test, *_ = trained
        torch.manual_seed(123)  # a fresh model with different weights
        clone = build_model(model.config).eval()
        clone.load_state_dict(load(save(model.state_dict())))
        with torch.inference_mode():
            assert torch.equal(clone(test[:16]), model(test[:16]))

    def test_training_loss_parts_report_the_variant_term(self, trained):
        model, _, _, parts = trained
        term = VARIANT_TERM[model.config.variant]
        expected = {"loss", "recon"} | ({term} if term else set())
        assert set(parts) == expected
        assert all(isinstance(v, float) and math.isfinite(v) for v in parts.values())

    def test_trains_under_bf16_autocast(self, trained):
        """The model code is autocast-safe (the CUDA trainer's AMP), checked with CPU autocast.
        oneDNN's LSTM has no bf16 kernel on a CPU without native bf16 (AVX512-BF16 / AMX: an AMD
        EPYC without AVX-512, say); there the check runs on ATen's own kernels instead."""
        from stream_ae.scoring import cpu_has_native_bf16

        model, test, *_ = trained
        model.train()
        try:
            with torch.backends.mkldnn.flags(enabled=cpu_has_native_bf16()), \
                    torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = model.training_loss(test[:16])
            loss.backward()
        finally:
            model.zero_grad()
            model.eval()
        assert torch.isfinite(loss)

    def test_eval_training_loss_is_deterministic(self, trained):
        """Validation losses must not carry denoising noise or variational sampling."""
        model, test, *_ = trained
        a = model.training_loss(test[:16])[1]
        with torch.no_grad():  # how a trainer validates; the contractive term still needs autograd inside
            b = model.training_loss(test[:16])[1]
        assert a["recon"] == b["recon"]


def test_denoising_corrupts_inputs_only_in_training_mode():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_channels=C, window=T, variant="denoising", noise_std=0.5)).train()
    x = sine_windows(8, seed=3)
    assert model.training_loss(x)[1]["recon"] != model.training_loss(x)[1]["recon"]


def test_build_model_picks_the_kind():
    assert isinstance(build_model(ModelConfig(kind="conv")), ConvAutoencoder)
    assert isinstance(build_model(ModelConfig(kind="lstm")), LstmAutoencoder)
    assert isinstance(build_model(ModelConfig()), Autoencoder)


def test_window_errors_means_over_time_then_channels():
    x = torch.zeros(1, 4, 2)
    recon = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # error 4 at one step of channel 0
    score, channel_error = window_errors(x, recon)
    assert channel_error.tolist() == [[1.0, 0.0]]
    assert score.tolist() == [0.5]


def test_config_round_trips_through_json():
    cfg = ModelConfig(kind="lstm", variant="sparse", n_channels=8, window=90, strides=(3, 2), sparsity="kl")
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.strides == (3, 2)


def test_config_unknown_key_names_it_and_lists_valid_keys():
    d = ModelConfig().to_dict() | {"hiden": 64}
    with pytest.raises(ConfigError, match=r"unknown model setting\(s\): hiden; valid: .*hidden"):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize("changes, message", [
    ({"kind": "gru"}, r"kind 'gru' is unknown; choose one of: conv, lstm"),
    ({"variant": "vae"}, r"variant 'vae' is unknown; choose one of: undercomplete, denoising"),
    ({"sparsity": "l2"}, r"sparsity 'l2' is unknown; choose one of: l1, kl"),
    ({"n_channels": 0}, r"n_channels must be a positive integer, got 0"),
    ({"hidden": -4}, r"hidden must be a positive integer"),
    ({"latent": 2.5}, r"latent must be a positive integer"),
    ({"layers": True}, r"layers must be a positive integer"),
    ({"window": "60"}, r"window must be a positive integer"),
    ({"kernel": 4}, r"kernel must be odd"),
    ({"window": 3}, r"window 3 is shorter than the conv's total stride 4"),
    ({"strides": (2, 0)}, r"strides must be a positive integer"),
    ({"strides": ()}, r"strides must be a non-empty list"),
    ({"dropout": 1.0}, r"dropout must be in \[0.0, 1.0\)"),
    ({"sparsity_target": 0.0}, r"sparsity_target must be in \(0.0, 1.0\)"),
    ({"kl_weight": -1e-3}, r"kl_weight must be in \[0.0"),
    ({"noise_std": float("nan")}, r"noise_std must be a finite number"),
])
def test_config_rejects_bad_values_with_an_actionable_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_short_window_is_fine_for_lstm():
    assert ModelConfig(kind="lstm", window=3).window == 3
