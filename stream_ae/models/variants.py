"""Variant terms, composed into one ``training_loss`` for every model kind.

A variant changes how a model is trained, never how it scores: ``forward`` is
the same deterministic reconstruction for all of them.

- undercomplete: plain reconstruction (the narrow code is the only regulariser).
- denoising: the input is corrupted with Gaussian noise (``noise_std``), the
  target stays clean.
- sparse: ``l1`` adds the mean absolute code; ``kl`` uses sigmoid code units and
  adds sum_j KL(rho || rho_hat_j), rho_hat_j the unit's mean activation.
- contractive: adds the squared Frobenius norm of the encoder Jacobian d code / d x
  divided by the code units per window: the mean over code units k of ||d code_k / d x||^2,
  how far one unit moves for a unit-norm change of the window. A conv's code grows with the
  window (and a sum with it: 6 % of the loss at T=240, 1.5 % at T=60); the mean does not, so
  ``contractive_weight`` means the same for any window and kind. The norm is estimated with
  one Rademacher probe per window (Hutchinson): for v with E[v v^T] = I,
  E ||J^T v||^2 = ||J||_F^2. One vector-Jacobian product with ``create_graph=True`` costs
  about one extra encoder backward, for any encoder (conv or LSTM), instead of one backward
  per code unit for the exact norm.
- variational: the encoder gives (mu, logvar); training decodes a reparameterised
  sample and adds KL(q(z|x) || N(0, I)) per window divided by T*C, so that
  ``kl_weight`` sits on the same per-value scale as the mean squared error.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stream_ae.models.config import ModelConfig

if TYPE_CHECKING:
    from stream_ae.models.base import Autoencoder


def code_activation(config: ModelConfig) -> nn.Module:
    """Activation applied to the encoder's code, chosen by kind and variant."""
    if config.variant == "variational":
        return nn.Identity()  # mu is unconstrained
    if config.variant == "sparse" and config.sparsity == "kl":
        return nn.Sigmoid()  # KL sparsity reads code units as firing probabilities
    return nn.ReLU(inplace=True) if config.kind == "conv" else nn.Identity()


def training_loss(model: "Autoencoder", x: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Loss of ``model`` on windows ``x`` (B, T, C) for its config's variant; see module doc."""
    cfg = model.config
    length = x.shape[1]
    x = model.view(x)  # the windows as the model reads them (detrended channels)
    x_in = x
    if cfg.variant == "denoising" and model.training:
        x_in = x + cfg.noise_std * torch.randn_like(x)  # (B, T, C)

    terms: dict[str, Tensor] = {}
    if cfg.variant == "contractive":
        code, penalty = _encode_with_jacobian_penalty(model, x_in)
        terms["contractive"] = penalty
        loss_extra = cfg.contractive_weight * penalty
    else:
        code, logvar = model.encode(x_in)
        loss_extra = None
        if cfg.variant == "variational":
            mu = code
            if model.training:
                code = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            terms["kl"] = gaussian_kl(mu, logvar) / (length * x.shape[2])
            loss_extra = cfg.kl_weight * terms["kl"]
        elif cfg.variant == "sparse":
            terms["sparsity"] = sparsity_penalty(code, cfg.sparsity, cfg.sparsity_target)
            loss_extra = cfg.sparsity_weight * terms["sparsity"]

    recon = model.decode(code, length)  # (B, T, C)
    rec = F.mse_loss(recon.float(), x.float())
    loss = rec if loss_extra is None else rec + loss_extra
    parts = {"loss": loss, "recon": rec, **terms}
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over code units, averaged over the batch."""
    mu, logvar = mu.float(), logvar.float()
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)  # (B, ...)
    return kl.flatten(1).sum(dim=1).mean()


def sparsity_penalty(code: Tensor, kind: str, target: float) -> Tensor:
    """``l1``: mean |code|. ``kl``: sum over units of KL(target || mean activation of the unit).

    For ``kl`` the code is expected in (0, 1) (sigmoid units); a unit's mean
    activation is taken over the batch and, for conv codes, over time.
    """
    code = code.float()
    if kind == "l1":
        return code.abs().mean()
    reduce_dims = [d for d in range(code.dim()) if d != 1]
    rho_hat = code.mean(dim=reduce_dims).clamp(1e-6, 1 - 1e-6)  # (K,)
    rho = target
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum()


def _encode_with_jacobian_penalty(model: "Autoencoder", x: Tensor) -> tuple[Tensor, Tensor]:
    """Code of ``x`` and a Hutchinson estimate of mean_b ||d code_b / d x_b||_F^2 / K, K the
    code units of one window (``code[0].numel()``).

    Windows are independent through the encoder, so one vector-Jacobian product
    with a Rademacher probe over the whole batch gives every window's J_b^T v_b.
    Grad is enabled locally so an eval-time call under ``torch.no_grad`` still
    reports the term (it cannot run under ``torch.inference_mode``).
    """
    with torch.enable_grad(), _double_backward_safe(model, x):
        x_req = x.detach().requires_grad_(True)  # (B, T, C)
        code, _ = model.encode(x_req)
        probe = torch.randint_like(code, 2) * 2 - 1  # Rademacher, E[v v^T] = I
        (jt_v,) = torch.autograd.grad(code, x_req, grad_outputs=probe, create_graph=True)
        units = code[0].numel()   # per window: latent (lstm), latent x code length (conv)
        penalty = jt_v.float().square().flatten(1).sum(dim=1).mean() / units
    return code, penalty


def _double_backward_safe(model: "Autoencoder", x: Tensor):
    """cuDNN's fused RNN has no double backward; use the native LSTM kernels for the penalty."""
    if x.is_cuda and model.config.kind == "lstm":
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()
