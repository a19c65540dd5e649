"""The picture of ``stream-ae bench soak``: resident memory and entities against readings seen."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_soak(path: Path, phases: dict, title: str) -> Path:
    """``phases``: name -> {"readings", "rss_mib", "heap_mib", "live", "parked"}, one value per pass."""
    from stream_ae.figures import figure, save

    fig = figure(figsize=(6 * len(phases), 6), layout="constrained")
    axes = fig.subplots(2, len(phases), sharex="col", squeeze=False, gridspec_kw={"height_ratios": [2, 1]})
    for col, (name, s) in enumerate(phases.items()):
        x = np.asarray(s["readings"]) / 1e6
        ax_mem, ax_ent = axes[0, col], axes[1, col]
        ax_mem.plot(x, s["rss_mib"], color="k", lw=1.0, marker=".", ms=3, label="resident")
        ax_mem.plot(x, s["heap_mib"], color="tab:purple", lw=1.0, marker=".", ms=3, label="C heap in use")
        ax_mem.set_title(name, fontsize=10)
        ax_mem.set_ylabel("MiB")
        ax_mem.set_ylim(0, max(s["rss_mib"]) * 1.15)  # from zero: a flat line stays flat
        ax_mem.legend(fontsize=7, loc="lower right")
        ax_ent.plot(x, s["live"], color="tab:blue", lw=1.0, label="live entities")
        ax_ent.plot(x, s["parked"], color="tab:orange", lw=1.0, label="parked entities")
        ax_ent.set_ylim(bottom=0)
        ax_ent.set_xlabel("readings seen (millions)")
        ax_ent.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    save(fig, path)
    return Path(path)
