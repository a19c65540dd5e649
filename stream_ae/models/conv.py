"""1-D convolutional autoencoder (the SKAB Conv-AE shape), channels-last throughout."""
from __future__ import annotations

import math

from torch import Tensor, nn

from stream_ae.models.base import Autoencoder
from stream_ae.models.config import ModelConfig


class ConvAutoencoder(Autoencoder):
    """Strided 1-D conv encoder, transposed-conv decoder, any window length.

    With the default config (C channels, strides (2, 2), kernel 7)::

        encoder  conv C -> hidden (stride 2), ReLU, dropout
                 conv hidden -> latent (stride 2), code activation   # code (B, latent, ceil(T/4))
        decoder  convT latent -> latent (stride 2), ReLU, dropout
                 convT latent -> hidden (stride 2), ReLU
                 conv hidden -> C (stride 1)                          # cropped to T

    Convolutions are 2-D with (1, k) kernels over a (B, C, 1, T) view of the
    (B, T, C) input: that view is channels-last in memory, which oneDNN/cuDNN run
    natively, so neither input nor output is ever copied to change layout
    (about 3x faster on CPU than channels-first Conv1d for these shapes).

    Examples
    --------
    >>> import torch
    >>> model = ConvAutoencoder(ModelConfig(n_channels=3, window=30)).eval()
    >>> model(torch.randn(5, 31, 3)).shape
    torch.Size([5, 31, 3])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c, k, pad = config.n_channels, config.kernel, config.kernel // 2
        n = len(config.strides)
        widths = [c] + [config.hidden] * (n - 1) + [config.latent]  # encoder channel plan
        code_out = config.latent * (2 if config.variant == "variational" else 1)

        enc: list[nn.Module] = []
        for i, s in enumerate(config.strides):
            last = i == n - 1
            enc.append(nn.Conv2d(widths[i], code_out if last else widths[i + 1], (1, k), (1, s), (0, pad)))
            if not last:  # the code's activation is the variant's (base.code_activation)
                enc += [nn.ReLU(inplace=True), nn.Dropout(config.dropout)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = []
        dec_widths = widths[1:] + [widths[-1]]  # latent -> latent, then mirror the encoder
        for i, s in enumerate(reversed(config.strides)):
            c_in, c_out = dec_widths[n - i], dec_widths[n - i - 1]
            # output_padding s-1 makes each stage exactly s times longer (odd kernel)
            dec += [nn.ConvTranspose2d(c_in, c_out, (1, k), (1, s), (0, pad), (0, s - 1)), nn.ReLU(inplace=True)]
            if i == 0:
                dec.append(nn.Dropout(config.dropout))
        dec.append(nn.Conv2d(widths[1], c, (1, k), 1, (0, pad)))
        self.decoder = nn.Sequential(*dec)
        self._total_stride = math.prod(config.strides)

    def _encode(self, x: Tensor) -> Tensor:
        h = self.encoder(x.transpose(1, 2).unsqueeze(2))  # (B, C, 1, T) channels-last view, no copy
        return h.squeeze(2)  # (B, K, ceil(T / prod(strides)))

    def decode(self, z: Tensor, length: int) -> Tensor:
        """Code (B, latent, L) -> (B, length, C); the decoder's L * prod(strides) >= length is cropped."""
        out = self.decoder(z.unsqueeze(2))  # (B, C, 1, L * prod(strides)), channels-last
        return out.squeeze(2)[:, :, :length].transpose(1, 2)  # (B, T, C)
