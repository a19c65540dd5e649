"""The autoencoder interface every model kind implements, and the window error it is scored by."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stream_ae.models import variants
from stream_ae.models.config import ModelConfig


def window_errors(x: Tensor, recon: Tensor) -> tuple[Tensor, Tensor]:
    """Mean squared reconstruction error of each window, overall and per channel.

    Computed in float32 whatever the input dtype, so bf16/fp16 reconstructions
    give stable scores.

    Parameters
    ----------
    x, recon : (B, T, C) windows and their reconstructions.

    Returns
    -------
    score : (B,) mean over time and channels.
    channel_error : (B, C) mean over time.

    Examples
    --------
    >>> x = torch.zeros(2, 4, 3)
    >>> score, per_channel = window_errors(x, x + 1.0)
    >>> score.tolist(), per_channel.shape
    ([1.0, 1.0], torch.Size([2, 3]))
    """
    diff = recon.float() - x.float()  # (B, T, C)
    channel_error = diff.square().mean(dim=1)  # (B, C)
    return channel_error.mean(dim=1), channel_error


class Autoencoder(nn.Module):
    """Base of every model: a batch of windows (B, T, C) in, reconstructions (B, T, C) out.

    Subclasses implement ``_encode`` (windows -> pre-activation code, with twice
    the code units when variational) and ``decode``. The variant (denoising,
    sparse, contractive, variational) lives in ``training_loss`` only; inference
    is the same plain ``forward`` for every variant and is deterministic.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.code_activation = variants.code_activation(config)

    def _encode(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, K, ...) pre-activation
        raise NotImplementedError

    def decode(self, z: Tensor, length: int) -> Tensor:
        """Code (B, latent, ...) -> reconstruction (B, length, C)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Windows (B, T, C) -> ``(code, logvar)``.

        ``code`` is the activated code, or the posterior mean when variational;
        ``logvar`` is the posterior log-variance when variational, else None.
        """
        h = self._encode(x)
        if self.config.variant == "variational":
            mu, logvar = h.chunk(2, dim=1)
            return mu, logvar
        return self.code_activation(h), None

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct windows (B, T, C) -> (B, T, C); variational models decode the mean."""
        z, _ = self.encode(x)
        return self.decode(z, x.shape[1])

    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction loss plus the variant's term on a batch of windows (B, T, C).

        Returns the scalar loss to back-propagate and a dict of float terms
        (``loss``, ``recon`` and the variant's own term) for a progress bar.
        Input corruption (denoising) and sampling (variational) happen in
        training mode only, so an eval-mode call gives a deterministic
        validation loss. Validate under ``torch.no_grad()``, not
        ``torch.inference_mode()``: the contractive term needs autograd.
        """
        return variants.training_loss(self, x)

    @torch.inference_mode()
    def errors(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Score windows (B, T, C): ``(score (B,), channel_error (B, C))``, see `window_errors`."""
        return window_errors(x, self(x))
