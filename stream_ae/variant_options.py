"""The training variants and the hyperparameters each one reads, without importing torch.

One table serves every way a user sets them: ``stream-ae train`` flags (``--noise-std``),
the retraining job's ``[retrain]`` keys (``retrain.noise_std``) and Python
(``ModelConfig(noise_std=...)``). An option given for a variant that does not read it is an
error, not a silent no-op: ``--variant sparse --noise-std 0.5`` trains nothing different.

Examples
--------
>>> given("denoising", {"noise_std": 0.5, "kl_weight": None})
{'noise_std': 0.5}
>>> given("sparse", {"noise_std": 0.5}, spell=lambda k: "--" + k.replace("_", "-"))
Traceback (most recent call last):
...
stream_ae.errors.ConfigError: --noise-std is read by the denoising variant only, not by sparse; \
drop it or choose --variant denoising
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from stream_ae.errors import ConfigError

VARIANTS = ("undercomplete", "denoising", "sparse", "contractive", "variational")
SPARSITY = ("l1", "kl")


class Option(NamedTuple):
    variant: str    # the variant that reads it
    default: Any    # ModelConfig's default
    help: str


#: every variant option; ``ModelConfig`` takes its defaults from here.
OPTIONS: dict[str, Option] = {
    "noise_std": Option("denoising", 0.2, "std of the Gaussian noise added to the scaled input in training"),
    "sparsity": Option("sparse", "l1", "l1: mean |code|; kl: KL of each code unit's mean activation to the target"),
    "sparsity_weight": Option("sparse", 1e-3, "weight of the sparsity term"),
    "sparsity_target": Option("sparse", 0.05, "target mean activation of a code unit (kl sparsity only)"),
    # the mean over code units (variants.py); 0.24 = 1e-3 on the sum over the conv preset's 240 units,
    # the strength every published conv figure was trained with
    "contractive_weight": Option("contractive", 0.24, "weight of the mean squared encoder gradient per code unit"),
    "kl_weight": Option("variational", 1e-3, "weight of the KL term to N(0, I), per input value"),
}


def _plain(key: str) -> str:
    return key


def _set(values: Mapping[str, Any], spell: Callable[[str], str]) -> dict[str, Any]:
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown variant option(s): {', '.join(map(spell, unknown))}; "
                          f"valid: {', '.join(map(spell, OPTIONS))}")
    return {k: v for k, v in values.items() if v is not None}


def given(variant: str, values: Mapping[str, Any], spell: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The options in ``values`` that were set (not None), checked to be read by ``variant``.

    ``spell`` turns an option (or ``"variant"``) into the name the user wrote, so the error
    names the flag or the setting to fix (None: the option's own name).
    """
    spell = spell or _plain
    chosen = _set(values, spell)
    for key in chosen:
        reader = OPTIONS[key].variant
        if reader != variant:
            raise ConfigError(f"{spell(key)} is read by the {reader} variant only, not by {variant}; "
                              f"drop it or choose {spell('variant')} {reader}")
    if "sparsity_target" in chosen and chosen.get("sparsity") != "kl":
        raise ConfigError(f"{spell('sparsity_target')} is the target of kl sparsity; "
                          f"add {spell('sparsity')} kl (l1 sparsity has no target)")
    return chosen


def given_per_variant(variants, values: Mapping[str, Any],
                      spell: Callable[[str], str] = _plain) -> dict[str, dict[str, Any]]:
    """For a run over several ``variants`` (an evaluation): each variant's share of the options
    set in ``values``; an option that none of them reads is an error.

    >>> given_per_variant(["undercomplete", "denoising"], {"noise_std": 0.5})
    {'undercomplete': {}, 'denoising': {'noise_std': 0.5}}
    """
    chosen = _set(values, spell)
    unread = [k for k in chosen if OPTIONS[k].variant not in variants]
    if unread:
        k = unread[0]
        raise ConfigError(f"{spell(k)} is read by the {OPTIONS[k].variant} variant, which this run does not "
                          f"include; drop it or add {OPTIONS[k].variant} to {spell('variant')}")
    return {v: given(v, {k: x for k, x in chosen.items() if OPTIONS[k].variant == v}, spell) for v in variants}
