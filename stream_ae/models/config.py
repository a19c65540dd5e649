"""Model hyperparameters: one frozen dataclass, saved inside every artifact."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from stream_ae.configs import from_mapping
from stream_ae.errors import ConfigError
from stream_ae.variant_options import OPTIONS, SPARSITY, VARIANTS

KINDS = ("conv", "lstm")


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
    contractive_weight : weight of the encoder Jacobian penalty (contractive): the squared
        Frobenius norm divided by the code units, i.e. the mean over code units of
        ``||d code_k / d window||^2``, so one weight means the same for any window length.
    kl_weight : weight of the KL term to N(0, I) (variational).
    detrend : indices of channels (in the artifact's channel order) whose per-window
        least-squares line is removed before the model reads the window, for slow drifts
        that are no fault on their own (e.g. temperatures); ``stream-ae train --detrend``
        names them.
    score_steps : a window's score is the error of its newest ``score_steps`` steps
        (0: the whole window). Scoring the newest readings lets an alert start and end
        with the fault instead of up to a window later.

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
    # the variant options (variant_options.OPTIONS: the variant reading each, its default)
    noise_std: float = OPTIONS["noise_std"].default
    sparsity: str = OPTIONS["sparsity"].default
    sparsity_weight: float = OPTIONS["sparsity_weight"].default
    sparsity_target: float = OPTIONS["sparsity_target"].default
    contractive_weight: float = OPTIONS["contractive_weight"].default
    kl_weight: float = OPTIONS["kl_weight"].default
    detrend: tuple[int, ...] = ()
    score_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("strides", "detrend"):  # JSON gives lists; keep the dataclass hashable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def to_dict(self) -> dict:
        """JSON-safe dict of every field (``strides`` and ``detrend`` as lists)."""
        d = asdict(self)
        d["strides"], d["detrend"] = list(self.strides), list(self.detrend)
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
        if not isinstance(self.detrend, tuple) or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_channels for i in self.detrend):
            raise ConfigError(f"detrend must list channel indices in [0, {self.n_channels - 1}], got {self.detrend!r}")
        if len(set(self.detrend)) != len(self.detrend):
            raise ConfigError(f"detrend names a channel twice: {list(self.detrend)}")
        if self.detrend and self.window < 3:   # a line through 1 or 2 points leaves nothing (or 0/0)
            raise ConfigError(f"detrend needs windows of at least 3 readings, got {self.window}")
        if isinstance(self.score_steps, bool) or not isinstance(self.score_steps, int) \
                or not 0 <= self.score_steps <= self.window:
            raise ConfigError(f"score_steps must be an integer in [0, window={self.window}] "
                              f"(0 scores the whole window), got {self.score_steps!r}")
        _number("dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)
        _number("noise_std", self.noise_std, lo=0.0)
        _number("sparsity_weight", self.sparsity_weight, lo=0.0)
        _number("sparsity_target", self.sparsity_target, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _number("contractive_weight", self.contractive_weight, lo=0.0)
        _number("kl_weight", self.kl_weight, lo=0.0)


def channel_indices(names, channels, what: str = "detrend") -> tuple[int, ...]:
    """Positions of channel ``names`` in ``channels`` (the artifact's order); a ConfigError names
    any that are missing and the channels there are.

    >>> channel_indices(["t2", "t1"], ("a", "t1", "t2"))
    (2, 1)
    """
    missing = [n for n in names if n not in channels]
    if missing:
        raise ConfigError(f"{what} names {', '.join(map(repr, missing))}, not among the channels: "
                          f"{', '.join(channels)}")
    return tuple(channels.index(n) for n in names)


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
