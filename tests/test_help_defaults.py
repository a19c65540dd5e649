"""Every flag's help names its default (session 36's new-user review: which SKAB file is
plotted, on which device `evaluate` runs -- cpu, where `train` and `backfill` take auto)."""
import pytest

from stream_ae.cli import build_parser


def helps(*command):
    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if a.dest in ("command", "action")).choices[name]
    return parser.format_help()


@pytest.mark.parametrize("command, shown", [
    (("evaluate",), ["(default: ../shared/data/skab)", "(default: conv)", "(default: valve1/1.csv)",
                     "(default: cpu)", "(default: all)"]),
    (("demo",), ["(default: demo-out)", "(default: 7)"]),
    (("train",), ["(default: 0)", "(default: auto)"]),
])
def test_the_defaults_are_in_the_help(command, shown):
    text = " ".join(helps(*command).split())
    for s in shown:
        assert s in text


def test_flags_without_a_default_say_none():
    text = helps("evaluate")
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: [])" not in helps("serve")   # the repeatable --set
