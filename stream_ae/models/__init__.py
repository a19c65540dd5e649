"""Autoencoder models: one interface, two kinds (conv, lstm), five training variants."""
from __future__ import annotations

from stream_ae.models.base import Autoencoder, window_errors
from stream_ae.models.config import KINDS, VARIANTS, ModelConfig
from stream_ae.models.conv import ConvAutoencoder
from stream_ae.models.lstm import LstmAutoencoder

_KINDS: dict[str, type[Autoencoder]] = {"conv": ConvAutoencoder, "lstm": LstmAutoencoder}


def build_model(config: ModelConfig) -> Autoencoder:
    """The untrained model a config describes, in float32 on the CPU; move it with ``.to(device)``.

    Examples
    --------
    >>> model = build_model(ModelConfig(kind="lstm", n_channels=4, hidden=8, latent=4))
    >>> type(model).__name__
    'LstmAutoencoder'
    """
    config.validate()
    return _KINDS[config.kind](config)


__all__ = [
    "KINDS", "VARIANTS", "Autoencoder", "ConvAutoencoder", "LstmAutoencoder", "ModelConfig",
    "build_model", "window_errors",
]
