"""The demo's picture: per entity, a signal, the score against its threshold, injected and detected spans."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_demo(path: Path, frames: dict, injected, detections, title: str) -> Path:
    """frames: entity -> dict(ts, signal, score_ts, score, threshold) with ns timestamps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entities = sorted(frames)
    fig, axes = plt.subplots(len(entities) * 2, 1, figsize=(13, 2.6 * len(entities) * 2), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1] * len(entities)})
    axes = np.atleast_1d(axes)
    to_h = lambda ts, t0: (np.asarray(ts) - t0) / 3.6e12  # noqa: E731 - ns -> hours
    t0 = min(int(f["ts"][0]) for f in frames.values())
    for i, ent in enumerate(entities):
        f = frames[ent]
        ax_sig, ax_sc = axes[2 * i], axes[2 * i + 1]
        ax_sig.plot(to_h(f["ts"], t0), f["signal"], lw=0.5, color="0.3")
        ax_sig.set_ylabel(f"{ent}\nch_0", fontsize=8)
        ax_sc.plot(to_h(f["score_ts"], t0), f["score"], lw=0.6, color="tab:blue", label="score")
        ax_sc.plot(to_h(f["score_ts"], t0), f["threshold"], lw=0.9, color="tab:red", label="threshold")
        ax_sc.set_yscale("log")
        ax_sc.set_ylabel("recon. error", fontsize=8)
        for a in injected:
            if a.entity == ent:
                for ax in (ax_sig, ax_sc):
                    ax.axvspan(to_h(a.start_ts, t0), to_h(a.end_ts, t0), color="tab:orange", alpha=0.25)
                ax_sig.text(to_h(a.start_ts, t0), ax_sig.get_ylim()[1], a.kind, fontsize=7, va="top")
        for d in detections:
            if d.entity == ent:
                ax_sc.axvspan(to_h(d.start_ts, t0), to_h(d.end_ts, t0) + 1e-3, color="tab:red", alpha=0.3)
    axes[1].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("hours since start (orange: injected anomaly, red: detected)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
