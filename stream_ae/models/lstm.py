"""Sequence-to-sequence LSTM autoencoder."""
from __future__ import annotations

from torch import Tensor, nn

from stream_ae.models.base import Autoencoder
from stream_ae.models.config import ModelConfig


class LstmAutoencoder(Autoencoder):
    """Encoder LSTM -> code vector -> decoder LSTM fed the repeated code -> linear to C.

    The code is a linear map of the encoder's last hidden state (top layer),
    so it summarises the whole window; the decoder sees only the code at every
    step (no teacher forcing), so it cannot copy the input through.

    Examples
    --------
    >>> import torch
    >>> model = LstmAutoencoder(ModelConfig(kind="lstm", n_channels=2, hidden=8, latent=4)).eval()
    >>> model(torch.randn(3, 17, 2)).shape
    torch.Size([3, 17, 2])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        between = config.dropout if config.layers > 1 else 0.0  # LSTM dropout acts between layers only
        code_out = config.latent * (2 if config.variant == "variational" else 1)
        self.encoder = nn.LSTM(config.n_channels, config.hidden, config.layers, batch_first=True, dropout=between)
        self.dropout = nn.Dropout(config.dropout)
        self.to_code = nn.Linear(config.hidden, code_out)
        self.decoder = nn.LSTM(config.latent, config.hidden, config.layers, batch_first=True, dropout=between)
        self.to_output = nn.Linear(config.hidden, config.n_channels)

    def _encode(self, x: Tensor) -> Tensor:
        _, (h_n, _) = self.encoder(x)  # h_n: (layers, B, hidden)
        return self.to_code(self.dropout(h_n[-1]))  # (B, K)

    def decode(self, z: Tensor, length: int) -> Tensor:
        """Code (B, latent) -> (B, length, C)."""
        steps = z.unsqueeze(1).expand(-1, length, -1)  # (B, T, latent), a view
        out, _ = self.decoder(steps)  # (B, T, hidden)
        return self.to_output(out)  # (B, T, C)
