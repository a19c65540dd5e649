"""Inference-only form of the conv autoencoder in which every layer is a stride-1 convolution.

A stride-2 convolution over a sequence equals a stride-1 convolution over its *phases*: view
the length-L sequence of C channels as L/2 steps of 2C channels (even and odd samples side by
side) and rearrange the kernel taps accordingly. The same holds for a stride-2 transposed
convolution (2 output phases from 1 input phase) and for a stride-1 convolution run at half
the rate (2 phases in, 2 out). In the channels-last layout the model already uses, these
views are free: ``(B, C, 1, L)`` channels-last is ``(B, L, C)`` in memory, which *is*
``(B, L/2, 2C)``. Nothing is copied except the zero padding of uneven taps.

Why: oneDNN runs stride-1 convolutions whose channel counts are multiples of 16 far better
than stride-2 ones, transposed ones, or ones with 8 output channels. On the conv preset
(8 channels, window 60, 32/16 filters, kernel 7), one CPU thread: 12.4 -> 10.4 us a window
in fp32 and 7.0 -> 5.4 us in bf16 (``bench/bench_model.py``-style timing, B = 1024). The
arithmetic is the same sums in another order: outputs agree with the module to float
rounding (~1e-7 relative), and :func:`inference_model` checks that on every model it
rewrites, falling back to the module itself otherwise.

Only :class:`~stream_ae.models.conv.ConvAutoencoder` with stride-2 stages, odd kernels and a
window divisible by ``2 ** stages`` is rewritten; anything else (the LSTM, other strides) is
returned unchanged. Training never sees this form.

**Newest steps only.** A score that reads only the newest ``tail`` steps of each window
(``ModelConfig.score_steps``) needs only the outputs whose receptive field ends there, and the
model has no dense layer: those outputs depend on a suffix of the window. With ``tail``, the
input is cropped to that suffix and every layer computes only outputs whose taps all fall on
real values (no left padding, so nothing near the crop is made up); the right edge, and its
padding, are the window's own. The outputs returned are then exactly the model's newest
outputs, to float rounding. On the conv preset (window 60, newest 20 steps scored) that is
~46 % of the full form's multiply-adds.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


class PhaseConv(nn.Module):
    """One layer as a stride-1 convolution over phases: ``(B, C, 1, L) -> (B, O, 1, L')``.

    ``in_phases`` / ``out_phases`` (1 or 2): how many samples of the natural sequence one
    step of the convolution's input / output holds. Input and output are natural sequences;
    the phase views are taken inside.

    ``trim`` natural samples are dropped from the start of the input first (the newest-steps
    form, :func:`_tail_layers`, uses it to keep phases aligned).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, in_phases: int, out_phases: int,
                 pad: tuple[int, int], trim: int = 0) -> None:
        super().__init__()
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if bias is None else bias.contiguous())
        self.in_phases, self.out_phases, self.pad, self.trim = in_phases, out_phases, pad, trim

    def forward(self, h: Tensor) -> Tensor:
        if self.trim:
            h = h[..., self.trim:]
        if self.in_phases == 2:
            b, c, _, n = h.shape
            h = h.permute(0, 2, 3, 1).reshape(b, 1, n // 2, 2 * c).permute(0, 3, 1, 2)
        left, right = self.pad
        if left == right:
            y = F.conv2d(h, self.weight, self.bias, padding=(0, left))
        else:
            y = F.conv2d(F.pad(h, (left, right)), self.weight, self.bias)
        if self.out_phases == 2:
            b, o, _, n = y.shape
            y = y.permute(0, 2, 3, 1).reshape(b, 1, 2 * n, o // 2).permute(0, 3, 1, 2)
        return y


def _phase_conv(taps, out_ch: int, in_ch: int, in_phases: int, out_phases: int, bias) -> PhaseConv:
    """Build a :class:`PhaseConv` from ``taps``: ``(out phase, in phase, step offset, W (O, I))``.

    Output step ``m`` of phase ``p`` sums ``W @ input[m + offset]`` (phase ``q``) over its taps.
    """
    lo, hi = min(t[2] for t in taps), max(t[2] for t in taps)
    weight = taps[0][3].new_zeros(out_phases * out_ch, in_phases * in_ch, 1, hi - lo + 1)
    for p, q, off, w in taps:
        weight[p * out_ch:(p + 1) * out_ch, q * in_ch:(q + 1) * in_ch, 0, off - lo] += w
    if bias is not None and out_phases == 2:
        bias = bias.repeat(2)
    return PhaseConv(weight, bias, in_phases, out_phases, (-lo, hi))


def _strided_conv(conv: nn.Conv2d, out_slice: slice | None = None) -> PhaseConv:
    """Conv, stride 2, kernel k (odd), padding k // 2: 2 input phases, 1 output phase."""
    w = conv.weight.detach()[:, :, 0, :]  # (O, I, k)
    b = None if conv.bias is None else conv.bias.detach()
    if out_slice is not None:
        w, b = w[out_slice], None if b is None else b[out_slice]
    half = w.shape[2] // 2
    taps = [(0, *divmod(k - half, 2)[::-1], w[:, :, k]) for k in range(w.shape[2])]
    return _phase_conv(taps, w.shape[0], w.shape[1], 2, 1, b)


def _transposed_conv(conv: nn.ConvTranspose2d) -> PhaseConv:
    """Transposed conv, stride 2, kernel k (odd), padding k // 2, output padding 1: 1 phase in, 2 out."""
    w = conv.weight.detach()[:, :, 0, :]  # (I, O, k)
    half = w.shape[2] // 2
    # output t = 2 i - half + k; for t = 2 m + p the input step is i = m + (p + half - k) / 2
    taps = [(p, 0, (p + half - k) // 2, w[:, :, k].t())
            for p in range(2) for k in range(w.shape[2]) if (p + half - k) % 2 == 0]
    return _phase_conv(taps, w.shape[1], w.shape[0], 1, 2, None if conv.bias is None else conv.bias.detach())


def _plain_conv(conv: nn.Conv2d) -> PhaseConv:
    """Conv, stride 1, kernel k (odd), padding k // 2, run at half rate: 2 phases in, 2 out."""
    w = conv.weight.detach()[:, :, 0, :]  # (O, I, k)
    half = w.shape[2] // 2
    taps = [(p, *divmod(p + k - half, 2)[::-1], w[:, :, k]) for p in range(2) for k in range(w.shape[2])]
    return _phase_conv(taps, w.shape[0], w.shape[1], 2, 2, None if conv.bias is None else conv.bias.detach())


class PolyphaseConvAutoencoder(nn.Module):
    """``forward(x (B, T, C)) -> reconstruction (B, T - crop - shrink, C)``: the source model's
    newest outputs in eval mode (all ``T`` of them when built without a tail: ``crop = 0``)."""

    def __init__(self, layers: list[nn.Module], crop: int = 0) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.crop = int(crop)

    def forward(self, x: Tensor) -> Tensor:
        if self.crop:
            x = x[:, self.crop:]
        out = self.layers(x.transpose(1, 2).unsqueeze(2))  # (B, C, 1, T') channels-last view
        return out.squeeze(2).transpose(1, 2)  # (B, T', C)


def _tail_start(layers: list[nn.Module], crop: int) -> tuple[int, list[int]]:
    """Where the valid-left form's output starts (natural samples) for input cropped at
    ``crop``, and the samples each phase layer trims to start on a whole phase step."""
    start, trims = crop, []
    for layer in layers:
        if isinstance(layer, PhaseConv):
            trim = -start % layer.in_phases
            start += trim
            start = layer.out_phases * (start // layer.in_phases + layer.pad[0])
            trims.append(trim)
    return start, trims


def _tail_layers(layers: list[nn.Module], window: int, tail: int) -> tuple[list[nn.Module], int] | None:
    """``layers`` rewritten to compute only (at least) the newest ``tail`` outputs, and the
    input crop; None when even the uncropped valid-left form yields fewer than ``tail``."""
    for crop in range(window - tail, -1, -1):  # the latest start that still yields ``tail`` outputs
        start, trims = _tail_start(layers, crop)
        if window - start >= tail:
            break
    else:
        return None
    trims = iter(trims)
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, PhaseConv):
            layer = PhaseConv(layer.weight, layer.bias, layer.in_phases, layer.out_phases,
                              (0, layer.pad[1]), next(trims))
        out.append(layer)
    return out, crop


def _layers(model) -> list[nn.Module] | None:
    """The rewritten layer list, or None when ``model`` is not a shape this module handles."""
    from stream_ae.models.conv import ConvAutoencoder

    if not isinstance(model, ConvAutoencoder):
        return None
    cfg = model.config
    if any(s != 2 for s in cfg.strides) or cfg.kernel % 2 == 0 or cfg.window % (2 ** len(cfg.strides)):
        return None
    elementwise = (nn.ReLU, nn.Sigmoid, nn.Identity)
    layers: list[nn.Module] = []
    enc = [m for m in model.encoder if not isinstance(m, nn.Dropout)]
    convs = [m for m in enc if isinstance(m, nn.Conv2d)]
    for m in enc:
        if isinstance(m, nn.Conv2d):
            # variational: the last conv outputs (mu, logvar); inference decodes mu only
            last = m is convs[-1] and cfg.variant == "variational"
            layers.append(_strided_conv(m, slice(0, cfg.latent) if last else None))
        elif isinstance(m, elementwise):
            layers.append(m)
        else:
            return None
    if cfg.variant != "variational":
        layers.append(model.code_activation)
    dec = [m for m in model.decoder if not isinstance(m, nn.Dropout)]
    for i, m in enumerate(dec):
        if isinstance(m, nn.ConvTranspose2d):
            layers.append(_transposed_conv(m))
        elif isinstance(m, nn.Conv2d) and i == len(dec) - 1:
            layers.append(_plain_conv(m))
        elif isinstance(m, elementwise):
            layers.append(m)
        else:
            return None
    return layers


def inference_model(model: nn.Module, tail: int = 0) -> nn.Module:
    """``model`` rewritten as stride-1 convolutions over phases when it is a conv autoencoder of
    that shape and the rewrite reproduces it (checked here, on the model's device); else ``model``.

    With ``tail`` > 0 the rewrite returns only the newest outputs (at least ``tail`` of them,
    equal to the model's), computing no more than they need; callers read the newest ``tail``.

    Examples
    --------
    >>> import torch
    >>> from stream_ae.models import ModelConfig, build_model
    >>> model = build_model(ModelConfig(n_channels=3, window=20)).eval()
    >>> fast = inference_model(model)
    >>> type(fast).__name__
    'PolyphaseConvAutoencoder'
    >>> x = torch.randn(4, 20, 3)
    >>> torch.allclose(fast(x), model(x), atol=1e-6)
    True
    >>> newest = inference_model(build_model(ModelConfig(n_channels=3, window=60)).eval(), tail=20)
    >>> newest.crop, newest(torch.randn(4, 60, 3)).shape  # input from step 16 on, 22 newest outputs
    (16, torch.Size([4, 22, 3]))
    """
    layers = _layers(model)
    if layers is None:
        return model
    cfg = model.config
    crop = 0
    if 0 < tail < cfg.window:
        cropped = _tail_layers(layers, cfg.window, tail)
        if cropped is not None:
            layers, crop = cropped
    fast = PolyphaseConvAutoencoder(layers, crop).eval()
    param = next(model.parameters())
    x = torch.randn(3, cfg.window, cfg.n_channels, generator=torch.Generator().manual_seed(0)).to(param)
    with torch.no_grad():
        got = fast(x)
        want = model.eval()(x)[:, cfg.window - got.shape[1]:]
    try:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-7)
    except AssertionError as exc:
        log.warning("polyphase rewrite of the conv model differs from it (%s); scoring with the model itself",
                    str(exc).splitlines()[0][:200])
        return model
    return fast
