"""The autoencoder interface every model kind implements, and the window error it is scored by."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stream_ae.models import variants
from stream_ae.models.config import ModelConfig


def window_errors(x: Tensor, recon: Tensor, last: int = 0) -> tuple[Tensor, Tensor]:
    """Mean squared reconstruction error of each window, overall and per channel.

    Computed in float32 whatever the input dtype, so bf16/fp16 reconstructions
    give stable scores.

    Parameters
    ----------
    x, recon : (B, T, C) windows and their reconstructions.
    last : score only the newest ``last`` steps of each window (0: all ``T``).

    Returns
    -------
    score : (B,) mean over the scored steps and channels.
    channel_error : (B, C) mean over the scored steps.

    Examples
    --------
    >>> x = torch.zeros(2, 4, 3)
    >>> score, per_channel = window_errors(x, x + 1.0)
    >>> score.tolist(), per_channel.shape
    ([1.0, 1.0], torch.Size([2, 3]))
    >>> recon = x.clone(); recon[:, 0] = 4.0  # only the oldest step is off
    >>> window_errors(x, recon)[0].tolist(), window_errors(x, recon, last=3)[0].tolist()
    ([4.0, 4.0], [0.0, 0.0])
    """
    if last:
        x, recon = x[:, -last:], recon[:, -last:]
    diff = recon.float() - x.float()  # (B, T, C)
    channel_error = diff.square().mean(dim=1)  # (B, C)
    return channel_error.mean(dim=1), channel_error


def detrend_channels(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` (B, T, C) with each window's least-squares line (level and slope) removed from
    the channels where ``mask`` (C,) is 1; the other channels pass unchanged.

    For slow drifts that carry no fault on their own (temperatures following the ambient or
    the plant's thermal history): the model then sees such a channel's shape within the
    window, not where it happens to sit. One traceable expression, no Python branches.

    Examples
    --------
    >>> t = torch.arange(5.0)
    >>> x = torch.stack([3.0 + 2.0 * t, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])], dim=1)[None]
    >>> detrend_channels(x, torch.tensor([1.0, 0.0]))[0, :, 0].abs().max().item() < 1e-6
    True
    >>> detrend_channels(x, torch.tensor([1.0, 0.0]))[0, :, 1].tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0]
    """
    length = x.shape[1]
    t = torch.arange(length, dtype=x.dtype, device=x.device) - (length - 1) / 2  # (T,) centred time
    t = t[None, :, None]  # (1, T, 1)
    level = x.mean(dim=1, keepdim=True)  # (B, 1, C)
    slope = (x * t).sum(dim=1, keepdim=True) / t.square().sum()  # (B, 1, C)
    return x - (level + slope * t) * mask


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
        mask = torch.zeros(config.n_channels)
        mask[list(config.detrend)] = 1.0
        self.register_buffer("detrend_mask", mask, persistent=False)  # (C,) 1: detrended channel

    def view(self, x: Tensor) -> Tensor:
        """Windows (B, T, C) as the model reads them: ``config.detrend`` channels detrended
        (see `detrend_channels`); the windows themselves when none are."""
        return detrend_channels(x, self.detrend_mask) if self.config.detrend else x

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
        """Reconstruct windows (B, T, C) -> (B, T, C); variational models decode the mean.

        ``x`` is the model's view of the windows (`view`): training, validation and scoring
        all take it first."""
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
        """Score windows (B, T, C): ``(score (B,), channel_error (B, C))`` of the model's view of
        them, over their newest ``config.score_steps`` steps; see `window_errors`.

        Always in eval mode (no dropout), as the Scorer scores: a model fresh from
        ``build_model`` or from a training loop is put back in its mode afterwards."""
        was_training = self.training
        self.eval()
        try:
            v = self.view(x)
            return window_errors(v, self(v), self.config.score_steps)
        finally:
            self.train(was_training)
