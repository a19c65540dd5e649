"""The conv model's inference form (stride-1 convolutions over phases) reproduces the model."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from stream_ae.models import VARIANTS, ModelConfig, build_model
from stream_ae.models import polyphase
from stream_ae.models.polyphase import PolyphaseConvAutoencoder, inference_model

SHAPES = [dict(), dict(kernel=5), dict(kernel=3, strides=(2, 2, 2), window=64), dict(strides=(2,), window=30),
          dict(hidden=24, latent=12, kernel=9, window=40)]


@pytest.mark.parametrize("tail", [0, 1, 5, 20, 30])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "preset")
def test_the_rewrite_reconstructs_as_the_model_does(variant, shape, tail):
    """The whole window (tail 0), or the model's newest outputs (at least ``tail`` of them)."""
    base = ModelConfig(kind="conv", variant=variant, n_channels=5, window=60, hidden=32, latent=16, kernel=7)
    config = dataclasses.replace(base, **shape)
    torch.manual_seed(7)
    model = build_model(config).eval()
    fast = inference_model(model, tail=tail)
    assert isinstance(fast, PolyphaseConvAutoencoder)
    x = torch.randn(33, config.window, config.n_channels)
    with torch.no_grad():
        want, got = model(x), fast(x)
    if tail == 0:
        assert got.shape == want.shape
    assert min(tail, config.window) <= got.shape[1] <= config.window
    torch.testing.assert_close(got, want[:, -got.shape[1]:], rtol=1e-5, atol=1e-6)


def test_the_newest_steps_form_skips_what_they_do_not_need():
    """The preset (window 60, newest 20 scored) reads the input from step 16 and returns 22
    outputs; a fault before step 16 cannot reach them, and the whole model agrees."""
    model = build_model(ModelConfig(kind="conv", n_channels=8, window=60, hidden=32, latent=16, kernel=7)).eval()
    fast = inference_model(model, tail=20)
    assert fast.crop == 16
    x = torch.randn(4, 60, 8)
    bad = x.clone()
    bad[:, :16] += 100.0
    with torch.no_grad():
        assert fast(x).shape == (4, 22, 8)
        torch.testing.assert_close(fast(bad), fast(x))
        torch.testing.assert_close(model(bad)[:, -22:], model(x)[:, -22:], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(bad)[:, :16], model(x)[:, :16], atol=1e-3)  # where it does reach


def test_the_sparse_kl_code_activation_is_kept():
    model = build_model(ModelConfig(kind="conv", variant="sparse", sparsity="kl", n_channels=3, window=20)).eval()
    x = torch.randn(4, 20, 3)
    with torch.no_grad():
        torch.testing.assert_close(inference_model(model)(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", [
    ModelConfig(kind="lstm", n_channels=3, window=10, hidden=8, latent=4),
    ModelConfig(kind="conv", n_channels=3, window=62),                 # not a multiple of 4: cropped
    ModelConfig(kind="conv", n_channels=3, window=60, strides=(2, 1)),
])
def test_other_shapes_are_scored_by_the_model_itself(config):
    model = build_model(config).eval()
    assert inference_model(model) is model


def test_a_rewrite_that_differs_is_refused(monkeypatch, caplog):
    """Guard: the rewrite is checked against the model, never trusted blindly."""
    model = build_model(ModelConfig(kind="conv", n_channels=3, window=20)).eval()
    layers = polyphase._layers

    def broken(m):
        out = layers(m)
        out[0].weight.mul_(1.01)  # one tap off by 1 %
        return out

    monkeypatch.setattr(polyphase, "_layers", broken)
    with caplog.at_level(logging.WARNING):
        assert inference_model(model) is model
    assert "differs" in caplog.text


def test_the_model_itself_is_untouched():
    model = build_model(ModelConfig(kind="conv", n_channels=3, window=20)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inference_model(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
