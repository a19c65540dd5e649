"""Progress bars for long work: shown on a terminal, silent in logs and CI."""
from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar that is drawn only when enabled and stderr is a terminal.

    `disable=None` is tqdm's own rule for "not a TTY": a job's log then holds the final
    report instead of thousands of carriage-return updates.

    >>> bar = progress_bar(False, total=3)
    >>> bar.update(3); bar.close()
    """
    kwargs.setdefault("mininterval", 0.5)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(disable=None if enabled else True, **kwargs)
