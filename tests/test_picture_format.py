"""A picture's name says its format, checked before the work (session 36's new-user review:
``evaluate skab --plot x.txt`` or a name without an extension evaluated for minutes, then
ended in a traceback from matplotlib, which took the temporary name's random part for a format)."""
from pathlib import Path

import pytest

from stream_ae.errors import ConfigError
from stream_ae.figures import figure, picture_format, save

SKAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "skab"


def test_a_name_without_an_extension_is_written_as_png(tmp_path):
    fig = figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    out = save(fig, tmp_path / "plot")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plot"]


@pytest.mark.parametrize("name", ["eval.txt", "eval.csv"])
def test_an_extension_that_is_no_image_format_is_refused_naming_the_flag(name):
    with pytest.raises(ConfigError, match=f"--plot {name}: .* is not an image format"):
        picture_format(name, "--plot")


@pytest.mark.skipif(not SKAB.is_dir(), reason="needs the SKAB data in ../shared/data/skab")
def test_evaluate_refuses_such_a_plot_before_evaluating(tmp_path, capsys):
    from stream_ae.cli import main

    assert main(["evaluate", "skab", "--data", str(SKAB), "--plot", str(tmp_path / "x.txt")]) == 2
    assert "is not an image format" in capsys.readouterr().err
