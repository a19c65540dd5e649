"""The demo's picture: per entity, the channels its anomalies touch, the score against its
threshold, injected and detected spans."""
from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_CHANNELS = 3  # channels drawn per entity


def shown_channels(channels, injected, entity: str) -> list[int]:
    """Indices of the channels to draw for ``entity``, at most ``MAX_CHANNELS``: first one
    channel of each of its injected anomalies not already shown (so each appears on a drawn
    channel while there is room), then the anomalies' other channels; the first channel
    when it has none."""
    touched = [[channels.index(c) for c in a.channels if c in channels] for a in injected if a.entity == entity]
    out: list[int] = []
    for chs in touched:
        if chs and not set(chs) & set(out):
            out.append(chs[0])
    for chs in touched:
        out += [c for c in chs if c not in out]
    return out[:MAX_CHANNELS] or [0]


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - np.nanmean(x)) / (np.nanstd(x) or 1.0)


def plot_demo(path: Path, frames: dict, injected, detections, title: str) -> Path:
    """frames: entity -> dict(ts, values (n, C), channels, score_ts, score, threshold), ns timestamps.

    Each entity's signal panel draws the channels its injected anomalies touch (at most
    ``MAX_CHANNELS``; the span's label names them all), each as a
    z-score over the run (channels differ in level and scale), and names the kind and the
    channels of every injected span."""
    from stream_ae.figures import figure, save

    entities = sorted(frames)
    fig = figure(figsize=(13, 2.6 * len(entities) * 2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(entities) * 2, 1, sharex=True))
    to_h = lambda ts, t0: (np.asarray(ts) - t0) / 3.6e12  # noqa: E731 - ns -> hours
    t0 = min(int(f["ts"][0]) for f in frames.values())
    for i, ent in enumerate(entities):
        f = frames[ent]
        channels = list(f["channels"])
        ax_sig, ax_sc = axes[2 * i], axes[2 * i + 1]
        for k, c in enumerate(shown_channels(channels, injected, ent)):
            ax_sig.plot(to_h(f["ts"], t0), _zscore(np.asarray(f["values"][:, c], dtype=float)), lw=0.5,
                        color=("0.25", "tab:green", "tab:purple")[k], label=channels[c])
        ax_sig.set_ylabel(f"{ent}\nz-score", fontsize=8)
        ax_sig.legend(loc="lower right", fontsize=7, ncol=MAX_CHANNELS)
        ax_sc.plot(to_h(f["score_ts"], t0), f["score"], lw=0.6, color="tab:blue", label="score")
        ax_sc.plot(to_h(f["score_ts"], t0), f["threshold"], lw=0.9, color="tab:red", label="threshold")
        ax_sc.set_yscale("log")
        ax_sc.set_ylabel("recon. error", fontsize=8)
        lo, hi = ax_sig.get_ylim()
        for k, a in enumerate(a for a in injected if a.entity == ent):
            for ax in (ax_sig, ax_sc):
                ax.axvspan(to_h(a.start_ts, t0), to_h(a.end_ts, t0), color="tab:orange", alpha=0.25)
            ax_sig.text(to_h(a.start_ts, t0), hi - (k % 2) * 0.1 * (hi - lo),  # two rows: neighbours stay legible
                        f"{a.kind} ({', '.join(a.channels)})", fontsize=7, va="top")
        for d in detections:
            if d.entity == ent:
                ax_sc.axvspan(to_h(d.start_ts, t0), to_h(d.end_ts, t0) + 1e-3, color="tab:red", alpha=0.3)
    axes[1].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("hours since start (orange: injected anomaly, red: detected)")
    fig.suptitle(title)
    return save(fig, path)
