"""What a retrain run did and why: :class:`RetrainReport`, its JSON file and the score plot.

Exit codes (``RetrainReport.exit_code``, used by ``python -m jobs.retrain``):

* 0: ``promoted``, ``kept_champion``, ``already_done`` (a retry of a finished run) or ``not_due``;
* 1: ``failed`` (bad data, training failure, an unusable champion);
* 3: ``conflict`` (another run promoted meanwhile, or the run's lock stayed busy).
"""
from __future__ import annotations

import math
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stream_ae import durable
from stream_ae.jsontext import dumps, finite

_PLOT_LOCK = threading.Lock()
EXIT_CODES = {"promoted": 0, "kept_champion": 0, "already_done": 0, "not_due": 0, "failed": 1, "conflict": 3}


@dataclass
class RetrainReport:
    """One retrain run.

    ``decision``: one of :data:`EXIT_CODES`' keys; ``reasons``: why, in words;
    ``champion`` / ``challenger``: ``{"version": ..., "metrics": {...}}`` (None when absent);
    ``challenger_reused``: the challenger was trained by an earlier attempt on the same data.
    """

    run_id: str
    deployment: str
    decision: str
    reasons: list[str] = field(default_factory=list)
    now: str | None = None
    train_span: list[str] | None = None        # [start, end) ISO UTC
    holdout_span: list[str] | None = None
    fingerprint: str | None = None
    preset: dict | None = None
    rule: dict | None = None
    champion: dict | None = None
    challenger: dict | None = None
    challenger_reused: bool = False
    training: dict | None = None                # the challenger's data: rows, entities, span, coverage
    promotion: dict | None = None               # the registry's pointer record after promoting
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    report_path: str | None = None
    plot_path: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.decision, 1)

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def to_dict(self) -> dict:
        return finite(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "RetrainReport":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def summary(self) -> str:
        """One line for a log or a terminal."""
        versions = f"challenger {(self.challenger or {}).get('version')} vs champion {(self.champion or {}).get('version')}"
        why = "; ".join(self.reasons[:2]) if self.reasons else (self.error or "")
        return f"retrain {self.deployment}: {self.decision} ({versions}): {why}"


def write_report(report: RetrainReport, report_dir) -> Path:
    """Write ``<report_dir>/<run_id>.json`` atomically (temp file + rename); returns its path."""
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report.run_id}.json"
    report.report_path = str(path)
    tmp = folder / f".{report.run_id}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(dumps(report.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
    durable.publish(tmp, path)
    return path


def plot_scores(path, scores: dict[str, np.ndarray], thresholds: dict[str, float | None], title: str) -> Path:
    """Histogram of each model's normal-data holdout scores (log x), its threshold as a line."""
    with _PLOT_LOCK:   # matplotlib's text layout (mathtext tick labels) is not thread-safe
        return _plot_scores(Path(path), scores, thresholds, title)


def _plot_scores(path: Path, scores: dict, thresholds: dict, title: str) -> Path:
    from stream_ae.figures import figure, save

    finite = [s[np.isfinite(s) & (s > 0)] for s in scores.values()]
    finite = [s for s in finite if s.size]
    fig = figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    if finite:
        lo, hi = min(float(s.min()) for s in finite), max(float(s.max()) for s in finite)
        bins = np.geomspace(lo, hi * 1.0001 if hi > lo else lo * 10, 60)
        for (label, s), color in zip(scores.items(), ("tab:blue", "tab:orange", "tab:green")):
            s = s[np.isfinite(s) & (s > 0)]
            if s.size:
                ax.hist(s, bins=bins, alpha=0.5, color=color, label=f"{label} (median {np.median(s):.3g})")
            thr = thresholds.get(label)
            if thr is not None and math.isfinite(thr) and thr > 0:
                ax.axvline(thr, color=color, linestyle="--", linewidth=1, label=f"{label} threshold (median) {thr:.3g}")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("reconstruction score (normal holdout windows)")
    ax.set_ylabel("windows")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path, dpi=100)
