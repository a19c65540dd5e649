"""Flag groups and argument types of the `stream-ae` command line, and the train command's flags.

A flag's own type checks its value, so a bad one is refused by argparse naming the flag
(``argument --epochs: must be an integer >= 1, got '0'``) before anything is read.
"""
from __future__ import annotations

import argparse
import math

from stream_ae.variant_options import OPTIONS, SPARSITY, VARIANTS


def names(text: str) -> tuple[str, ...]:
    """Comma-separated names -> a tuple (at least one)."""
    out = tuple(n.strip() for n in text.split(",") if n.strip())
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated channel names, got {text!r}")
    return out


def integer(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    parse.__name__ = "integer"   # argparse names the type in its own messages
    return parse


def number(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite number in the interval [lo, hi] (``lo_open``/``hi_open``: excluded)."""
    span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open or math.isinf(hi) else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (lo < value or (not lo_open and value == lo))
                and (value < hi or (not hi_open and value == hi))):
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def layout_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("columns (wide layout: entity, timestamp, one column per channel)")
    g.add_argument("--entity-col", default=None, help="entity column (default: the model's, or 'entity')")
    g.add_argument("--time-col", default=None, help="timestamp column (default: the model's, or 'timestamp')")
    g.add_argument("--channels", default=None,
                   help="comma-separated channel columns, in order (default: train: every numeric column; "
                        "backfill: the model's channels)")
    g.add_argument("--time-unit", default=None, choices=("s", "ms", "us", "ns"),
                   help="unit of an integer epoch timestamp column (a Parquet timestamp needs none)")


def time_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", default=None, help="first timestamp to read, ISO 8601 (UTC if no zone)")
    p.add_argument("--end", default=None, help="timestamp to stop before, ISO 8601 (UTC if no zone)")


def variant_flag(key: str) -> str:
    """The flag of a variant option (or of ``variant``): ``noise_std`` -> ``--noise-std``."""
    return "--" + key.replace("_", "-")


def add_train_parser(sub) -> argparse.ArgumentParser:
    t = sub.add_parser("train", help="train an autoencoder from Parquet history",
                       description="Train a model from a Parquet history and write a versioned artifact.")
    t.add_argument("--history", required=True, help="Parquet file, directory, hive dataset, or filesystem URI")
    t.add_argument("--model", required=True, choices=("conv", "lstm"), help="model family")
    t.add_argument("--variant", default="undercomplete", choices=VARIANTS, help="training variant")
    t.add_argument("--out", default="models", help="artifact root directory (default: models)")
    layout_flags(t)
    time_flags(t)
    t.add_argument("--window", type=integer(2), default=None, help="window length in readings (default: preset)")
    t.add_argument("--hop", type=integer(1), default=None, help="readings between window starts (default: preset)")
    t.add_argument("--max-gap", type=number(0.0, lo_open=True), default=None,
                   help="seconds; a longer step breaks windows")
    t.add_argument("--epochs", type=integer(1), default=None, help="maximum epochs (default: preset)")
    t.add_argument("--max-windows", type=integer(2), default=None,
                   help="cap on sampled windows, training and validation together (>= 2)")
    t.add_argument("--threshold", choices=("evt", "quantile"), default=None, help="threshold rule (default: evt)")
    t.add_argument("--detrend", type=names, default=None, metavar="CHANNELS",
                   help="comma-separated channels whose per-window trend the model ignores: slow drifts "
                        "that are no fault on their own, e.g. temperatures (default: none)")
    t.add_argument("--score-steps", type=integer(0), default=None, metavar="N",
                   help="score a window by the error of its newest N readings, 0 = all (default: preset)")
    t.add_argument("--seed", type=integer(0), default=0, help="seed of the weights and the sampled windows")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    variant_option_flags(t)
    return t


def variant_option_flags(p: argparse.ArgumentParser) -> None:
    """``--noise-std`` ... : one flag per variant option (variant_options.OPTIONS), default None."""
    g = p.add_argument_group("variant options (each is read by the one variant it names)")
    for key, opt in OPTIONS.items():
        kind = dict(choices=SPARSITY) if key == "sparsity" else \
            dict(type=number(0.0, 1.0, lo_open=True, hi_open=True) if key == "sparsity_target" else number(0.0))
        g.add_argument(variant_flag(key), default=None, metavar=None if "choices" in kind else "X",
                       help=f"{opt.variant}: {opt.help} (default: {opt.default})", **kind)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless there is none (None, False) or the help
    says it already (a new user asked which SKAB file is plotted, and on which device)."""

    def _get_help_string(self, action):
        text = action.help or ""
        none = action.default is None or action.default is False or action.default == argparse.SUPPRESS \
            or action.default == []   # a repeatable flag's empty list is no default
        if none or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows the defaults; its sub-command parsers are too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
