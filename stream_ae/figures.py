"""Figures drawn off screen for every picture the package writes (demo, evaluation, benchmarks,
retraining report), without pyplot.

pyplot is global state: ``matplotlib.use("Agg")`` in a library switches the backend of the
notebook or application that called it and closes its open figures, and every pyplot figure
stays registered until closed. A :class:`~matplotlib.figure.Figure` with its own Agg canvas
touches nothing outside itself and is freed like any object.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def figure(**kwargs):
    """A new Figure drawn by Agg; ``kwargs`` go to :class:`matplotlib.figure.Figure`
    (``figsize``, ``layout`` ...). Lay it out with ``fig.subplots(...)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def picture_format(path, flag: str = "the picture") -> str:
    """The image format ``path``'s extension names (``png`` without one), or a ConfigError that
    names some there are: checked before minutes of work, not after them.

    >>> picture_format("out/eval.svg"), picture_format("out/eval")
    ('svg', 'png')
    >>> picture_format("eval.txt", "--plot")
    Traceback (most recent call last):
    ...
    stream_ae.errors.ConfigError: --plot eval.txt: 'txt' is not an image format; end the name in .png, .svg, .pdf, ...
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from stream_ae.errors import ConfigError

    fmt = Path(path).suffix[1:].lower() or "png"
    if fmt not in FigureCanvasAgg.get_supported_filetypes():
        raise ConfigError(f"{flag} {path}: {fmt!r} is not an image format; end the name in .png, .svg, .pdf, ...")
    return fmt


def save(fig, path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (its folder made as needed) through a temporary file and a
    rename, so a reader never sees half a picture; returns the path. The format is the
    extension's (``png`` without one: the temporary name's random part is not taken for one)."""
    path = Path(path)
    fmt = picture_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi, format=fmt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
