"""One figure per evaluated file: signals, score against threshold, labels and detections."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from stream_ae.evaluation.skab import FileRun


def plot_file_run(run: "FileRun", path: str | Path, channels: Sequence[str] | None = None,
                  title: str | None = None) -> Path:
    """Save a PNG of ``run``: normalised signals stacked, then score and threshold (log scale).

    The labelled anomaly is shaded red in both panels, the protocol's training span grey;
    points where the alert was open are marked along the bottom of the score panel and
    labelled changepoints are dotted lines.
    """
    from stream_ae.figures import figure, save

    path = Path(path)
    t = (run.ts - run.ts[0]) / 1e9  # seconds since the file's start
    fig = figure(figsize=(13, 8))
    ax_sig, ax_score = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    v = run.values.astype(np.float64)
    span = np.nanmax(v, 0) - np.nanmin(v, 0)
    norm = (v - np.nanmin(v, 0)) / np.where(span > 0, span, 1.0)  # (N, C) in [0, 1]
    names = list(channels) if channels is not None else [f"ch{i}" for i in range(v.shape[1])]
    for i in range(v.shape[1]):
        offset = v.shape[1] - 1 - i
        ax_sig.plot(t, norm[:, i] * 0.85 + offset, lw=0.8)
    ax_sig.set_yticks(np.arange(v.shape[1])[::-1] + 0.42, names, fontsize=8)
    ax_sig.set_ylim(-0.1, v.shape[1])

    ok = np.isfinite(run.score)
    positive = run.score[ok][run.score[ok] > 0]
    floor = positive.min() if positive.size else 1e-6
    ax_score.plot(t[ok], np.maximum(run.score[ok], floor), color="tab:blue", lw=0.9, label="score")
    ax_score.plot(t[ok], run.threshold[ok], color="black", lw=1.0, ls="--", label="threshold")
    ax_score.set_yscale("log")
    ax_score.set_ylabel("window score")
    ax_score.set_xlabel("seconds since start of file")
    hit = run.alert & run.test
    if hit.any():
        y0 = ax_score.get_ylim()[0]
        ax_score.scatter(t[hit], np.full(hit.sum(), y0), marker="|", s=120, color="tab:orange",
                         label="alert open (decision)", zorder=3, clip_on=False)

    for ax in (ax_sig, ax_score):
        _shade(ax, t, run.anomaly, "tab:red", 0.15, "labelled anomaly" if ax is ax_score else None)
        _shade(ax, t, ~run.test, "grey", 0.12, "not judged (training)" if ax is ax_score else None)
        for x in t[run.changepoint]:
            ax.axvline(x, color="tab:red", ls=":", lw=0.8)
    ax_score.legend(loc="upper left", fontsize=8, ncol=5)
    fig.suptitle(title or run.name)
    fig.tight_layout()
    return save(fig, path)


def _shade(ax, t: np.ndarray, mask: np.ndarray, color: str, alpha: float, label: str | None) -> None:
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    for j, (a, b) in enumerate(edges.reshape(-1, 2)):
        ax.axvspan(t[a], t[b - 1], color=color, alpha=alpha, lw=0, label=label if j == 0 else None)
