"""Model hyperparameters: one frozen dataclass, saved inside every artifact."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from stream_ae.configs import from_mapping
from stream_ae.errors import ConfigError

KINDS = ("conv", "lstm")
VARIANTS = ("undercomplete", "denoising", "sparse", "contractive", "variational")
SPARSITY = ("l1", "kl")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and training-objective hyperparameters of an autoencoder.

    The defaults are the production model: a 1-D convolutional autoencoder
    (filters 32 then 16, kernel 7, two stride-2 stages) over 60-step windows,
    the SKAB Conv-AE shape. Every value is checked on construction, so an
    invalid config cannot exist.

    Parameters
    ----------
    kind : {"conv", "lstm"}
    variant : {"undercomplete", "denoising", "sparse", "contractive", "variational"}
    n_channels : number of input channels C.
    window : window length T the model is trained on (the models accept any T).
    hidden : conv: filters of the outer stage(s); lstm: LSTM hidden size.
    latent : conv: filters of the code (innermost) stage; lstm: size of the code vector.
    kernel : conv kernel size (odd, so "same" padding keeps windows centred).
    layers : stacked LSTM layers (lstm only).
    dropout : dropout rate, active in training mode only.
    strides : conv encoder strides, one stage each; the code is ``window / prod(strides)`` long.
    noise_std : std of the Gaussian input corruption (denoising).
    sparsity, sparsity_weight, sparsity_target : sparse penalty: "l1" on the code,
        or "kl" divergence of the mean sigmoid code activation to ``sparsity_target``.
    contractive_weight : weight of the encoder Jacobian penalty (contractive).
    kl_weight : weight of the KL term to N(0, I) (variational).

    Examples
    --------
    >>> cfg = ModelConfig(n_channels=8)
    >>> ModelConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> ModelConfig(kind="gru")
    Traceback (most recent call last):
    ...
    stream_ae.errors.ConfigError: model kind 'gru' is unknown; choose one of: conv, lstm
    """

    kind: str = "conv"
    variant: str = "undercomplete"
    n_channels: int = 1
    window: int = 60
    hidden: int = 32
    latent: int = 16
    kernel: int = 7
    layers: int = 1
    dropout: float = 0.0
    strides: tuple[int, ...] = (2, 2)
    noise_std: float = 0.2
    sparsity: str = "l1"
    sparsity_weight: float = 1e-3
    sparsity_target: float = 0.05
    contractive_weight: float = 1e-3
    kl_weight: float = 1e-3

    def __post_init__(self) -> None:
        if isinstance(self.strides, list):  # JSON gives lists; keep the dataclass hashable
            object.__setattr__(self, "strides", tuple(self.strides))
        self.validate()

    def to_dict(self) -> dict:
        """JSON-safe dict of every field (``strides`` as a list)."""
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict; unknown keys are a ConfigError, missing keys take defaults."""
        return from_mapping(cls, d, "model")

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and what would be valid."""
        _choice("model kind", self.kind, KINDS)
        _choice("model variant", self.variant, VARIANTS)
        _choice("sparsity", self.sparsity, SPARSITY)
        for name in ("n_channels", "window", "hidden", "latent", "kernel", "layers"):
            _positive_int(name, getattr(self, name))
        if self.kernel % 2 == 0:
            raise ConfigError(f"kernel must be odd so 'same' padding keeps windows centred, got {self.kernel}")
        if not isinstance(self.strides, tuple) or not self.strides:
            raise ConfigError(f"strides must be a non-empty list of positive integers, got {self.strides!r}")
        for s in self.strides:
            _positive_int("each of strides", s)
        if self.kind == "conv" and self.window < math.prod(self.strides):
            raise ConfigError(
                f"window {self.window} is shorter than the conv's total stride {math.prod(self.strides)} "
                f"(strides {list(self.strides)}); use window >= {math.prod(self.strides)} or fewer/smaller strides"
            )
        _number("dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)
        _number("noise_std", self.noise_std, lo=0.0)
        _number("sparsity_weight", self.sparsity_weight, lo=0.0)
        _number("sparsity_target", self.sparsity_target, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _number("contractive_weight", self.contractive_weight, lo=0.0)
        _number("kl_weight", self.kl_weight, lo=0.0)


def _choice(what: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{what} {value!r} is unknown; choose one of: {', '.join(choices)}")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _number(name: str, value, lo: float, hi: float = math.inf,
            lo_open: bool = False, hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < lo or (lo_open and value == lo) or value > hi or (hi_open and value == hi):
        lo_b, hi_b = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ConfigError(f"{name} must be in {lo_b}{lo}, {hi}{hi_b}, got {value!r}")
