"""The retraining job: train a challenger on recent history, compare it with the champion on a
held-out span it never saw, promote only when it is at least as good, record why.

Spans, with ``now`` floored to ``retrain.align``::

    [now - holdout - train_span, now - holdout)   challenger trains here (History + train)
    [now - holdout, now)                           both models scored here (the backfill: the one scoring path)

Safe to retry and to overlap. A run's *fingerprint* hashes the train span, the history
files in it (path, size, mtime) and the preset; ``retrain/<deployment>/runs/<fp>.json`` in
the registry records the challenger trained for it and, once decided, the decision. A retry
reuses that challenger instead of training again, and a decided run is never re-decided (so
never promoted twice). Training for one fingerprint happens under a lock file (local
registries), so an overlapping identical run waits for it and reuses the result. The
promotion itself is the registry's compare-and-swap on the champion seen at the start: of
two overlapping runs at most one promotes; the other gets
:class:`~stream_ae.registry.PromotionConflict`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from stream_ae import lockfile
from stream_ae.artifact import load_artifact
from stream_ae.data.layout import Layout
from stream_ae.errors import ArtifactError, ConfigError, DataError, StreamAEError
from stream_ae.registry import PromotionConflict, Registry
from stream_ae.retraining import faults
from stream_ae.retraining.compare import (Decision, LabelledEvent, PromotionRule, decide, holdout_metrics,
                                          swap_blocker)
from stream_ae.retraining.compare import iso_utc as _iso
from stream_ae.retraining.labels import load_labels  # noqa: F401 - also this module's, as before
from stream_ae.retraining.report import RetrainReport, plot_scores, write_report
from stream_ae.stream.logs import masked_text
from stream_ae.stream.settings import parse_duration

log = logging.getLogger(__name__)
STATE_DIR = "retrain"


class RetrainBusy(StreamAEError):
    """Another run holds the lock for the same training data longer than ``retrain.lock_timeout_s``."""


# -- small registry-side records (a local path or any pyarrow filesystem) ----------------------

def write_json(registry: Registry, relpath: str, obj: dict) -> None:
    """Replace ``<registry root>/<relpath>`` whole (see :meth:`Registry.put_record`)."""
    registry.put_record(relpath, obj)


def read_json(registry: Registry, relpath: str) -> dict | None:
    """The record at ``relpath`` under the registry root, None when absent."""
    return registry.get_record(relpath)


def _wall() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _parse_time(text: str) -> dt.datetime:
    return pd.Timestamp(text).tz_convert("UTC").to_pydatetime()


def history_uri(settings) -> str:
    """``retrain.history``, or else the archiver's ``archive.root``."""
    uri = settings.retrain.history or getattr(getattr(settings, "archive", None), "root", None)
    if not uri:
        raise ConfigError("no history to train on: set retrain.history (or archive.root)")
    return str(uri)


def _deployment(settings) -> str:
    name = settings.retrain.deployment or settings.model.deployment
    if not name:
        raise ConfigError("no deployment to retrain: set retrain.deployment or model.deployment")
    return name


# -- schedule ------------------------------------------------------------------------------------

def is_due(settings, if_drift: bool | None = None) -> tuple[bool, str]:
    """``--schedule``: due when the last successful retrain is older than ``retrain.interval``,
    or (``if_drift`` / ``retrain.run_on_drift``) when a drift marker is newer than it."""
    from stream_ae.drift_marker import drift_marker_path

    cfg, deployment = settings.retrain, _deployment(settings)
    registry = Registry(settings.model.registry)
    last = read_json(registry, f"{STATE_DIR}/{deployment}/last.json")
    if last is None:
        return True, "no successful retrain recorded yet"
    # a marker written while that run trained is not handled by it (its data was chosen at its start);
    # the interval counts from that start too, or a daily run slips by its own length every day
    since = last.get("started_at", last["ran_at"])
    age = (_wall() - _parse_time(since)).total_seconds()
    if age >= parse_duration(cfg.interval):
        return True, f"the last successful retrain started {age:.0f} s ago (retrain.interval={cfg.interval})"
    if cfg.run_on_drift if if_drift is None else if_drift:
        marker = read_json(registry, drift_marker_path(deployment))
        if marker is not None and _parse_time(marker["reported_at"]) > _parse_time(since):
            return True, f"drift reported at {marker['reported_at']}, after the last retrain started ({since})"
    return False, (f"not due: the last successful retrain started {age:.0f} s ago (retrain.interval={cfg.interval})"
                   " and no newer drift marker")


# -- pieces ---------------------------------------------------------------------------------------

def fingerprint(history, train_start: int, train_end: int, preset) -> str:
    """Hash of the train span, the history files it reads (path, size, mtime) and the preset."""
    from stream_ae.backfill.output import resolve_filesystem

    fs, _ = resolve_filesystem(str(history.uri))
    paths = [f.path for f in history.fragments()]
    files = [[i.path, i.size, i.mtime_ns] for i in (fs.get_file_info(paths) if paths else [])]
    what = preset.to_dict()
    what["train"] = {k: v for k, v in what["train"].items() if k != "progress"}   # a display flag: the same run
    blob = json.dumps({"span": [int(train_start), int(train_end)], "files": files, "preset": what},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _training_lock(registry: Registry, deployment: str, fp: str, timeout_s: float):
    """Exclusive per-fingerprint lock (local registries; an object store relies on the promotion's CAS)."""
    if not registry.local:
        return contextlib.nullcontext()
    path = os.path.join(registry.path, STATE_DIR, deployment, f".train-{fp[:16]}.lock")
    return lockfile.exclusive(path, timeout_s, lambda holder: RetrainBusy(
        f"another retrain of {deployment!r} on the same data holds {path} ({holder or 'holder unknown'}); "
        f"waited retrain.lock_timeout_s={timeout_s:g} s. Retry later"), poll_s=0.1)


def evaluate(version: str, artifact_path, history_uri: str, start: int, end: int, device: str,
             events: list[LabelledEvent]):
    """Score the holdout with one model through the backfill (same windower, Scorer, causal threshold)."""
    import pyarrow.dataset as ds

    from stream_ae.backfill import run_backfill

    with tempfile.TemporaryDirectory(prefix="retrain-eval-") as out:
        run_backfill(str(history_uri), str(artifact_path), out, start=_iso(start), end=_iso(end), device=device,
                     progress=False, restart=True)
        cols = ["entity", "window_start", "window_end", "score", "threshold", "anomaly", "ready"]
        try:
            t = ds.dataset(out, format="parquet", partitioning="hive").to_table(columns=cols)
        except (OSError, ValueError):   # no part written: no window in the span
            t = None
    if t is None or t.num_rows == 0:
        empty = np.zeros(0)
        return holdout_metrics(version, empty.astype(object), empty.astype(np.int64), empty.astype(np.int64),
                               empty, empty.astype(bool), empty.astype(bool), empty, events)
    ns = lambda c: t.column(c).to_numpy().astype("datetime64[ns]").view(np.int64)  # noqa: E731
    return holdout_metrics(version, t.column("entity").to_numpy(zero_copy_only=False).astype(object),
                           ns("window_start"), ns("window_end"), t.column("score").to_numpy(),
                           t.column("anomaly").to_numpy(), t.column("ready").to_numpy(),
                           t.column("threshold").to_numpy(), events)


# -- the job ------------------------------------------------------------------------------------

def run_retrain(settings, now=None, *, schedule: bool = False, if_drift: bool | None = None,
                progress: bool = False) -> RetrainReport:
    """Train, compare, maybe promote; returns the report (also written to ``retrain.report_dir``).

    Parameters
    ----------
    settings : Settings
        Uses ``[retrain]`` and ``model.registry`` (and ``model.deployment`` as the default deployment).
    now : time, optional
        End of the holdout (ISO string, datetime, ns); default: the current time. Floored to ``retrain.align``.
    schedule : bool
        Run only when due (see :func:`is_due`); otherwise return a ``not_due`` report at once.
    if_drift : bool, optional
        With ``schedule``: also run when a drift marker is newer (default ``retrain.run_on_drift``).

    Raises
    ------
    DataError, ConfigError, ArtifactError
        Bad history or labels, training failed, an unusable champion (a ``failed`` report is written,
        as for any other error: an ``OSError`` from the registry, a ``RuntimeError`` from torch).
    PromotionConflict, RetrainBusy
        Another run promoted meanwhile, or holds the training lock too long (a ``conflict`` report is written).
    """
    from stream_ae.commands import resolve_preset
    from stream_ae.data.history import History, to_ns

    cfg, deployment = settings.retrain, _deployment(settings)
    started = _wall()
    if schedule or if_drift:
        due, why = is_due(settings, if_drift=True if if_drift else None)
        if not due:
            return RetrainReport(run_id="", deployment=deployment, decision="not_due", reasons=[why],
                                 started_at=started.isoformat(), finished_at=_wall().isoformat())
        log.info("retrain %s is due: %s", deployment, why)
    step = int(parse_duration(cfg.align) * 1e9)
    now_ns = (to_ns(now, "now") if now is not None else time.time_ns()) // step * step
    hold_start = now_ns - int(parse_duration(cfg.holdout_span) * 1e9)
    train_start = hold_start - int(parse_duration(cfg.train_span) * 1e9)
    registry = Registry(settings.model.registry)
    history_at = history_uri(settings)
    rule = PromotionRule(cfg.error_tolerance, cfg.alert_rate_tolerance, cfg.alert_rate_slack,
                         cfg.recall_tolerance, cfg.min_holdout_windows, cfg.fault_tolerance)
    preset = resolve_preset(cfg.model, cfg.variant, window=cfg.window, epochs=cfg.epochs,
                            max_windows=cfg.max_windows, seed=cfg.seed, device=cfg.device, progress=progress,
                            detrend=cfg.detrend, score_steps=cfg.score_steps,
                            variant_options=cfg.variant_options(), spell=lambda k: f"retrain.{k}")
    report = RetrainReport(run_id=f"{deployment}-{pd.Timestamp(now_ns, tz='UTC'):%Y%m%dT%H%M%SZ}", deployment=deployment,
                           decision="failed", now=_iso(now_ns), train_span=[_iso(train_start), _iso(hold_start)],
                           holdout_span=[_iso(hold_start), _iso(now_ns)], preset=preset.to_dict(),
                           rule=rule.to_dict(), started_at=started.isoformat())
    champion = registry.current(deployment)          # the CAS token: what serves now
    report.champion = {"version": champion, "metrics": None} if champion else None
    scores, thresholds, arts = {}, {}, {}
    try:
        if champion:   # before training: a version folder gone is a broken registry (exit 1), not bad settings
            try:
                arts["champion"] = load_artifact(registry.artifact_path(champion))
            except ConfigError as exc:
                raise ArtifactError(f"the champion {champion} cannot be loaded: {exc}") from None
        history = History.open(history_at, start=_iso(train_start), end=_iso(hold_start))
        champ_channels = tuple(arts["champion"].channels) if champion else ()
        if set(champ_channels) == set(history.channels) and champ_channels != history.channels:
            # the champion's channel order, whatever order the span's first file has (a channel offline then)
            history = History.open(history_at, Layout(channels=champ_channels),
                                   start=_iso(train_start), end=_iso(hold_start))
        fp = report.fingerprint = fingerprint(history, train_start, hold_start, preset)
        report.run_id += f"-{fp[:8]}"
        runs = f"{STATE_DIR}/{deployment}/runs/{fp}.json"
        if _already_done(registry, report, read_json(registry, runs) or {}, champion, fp, started):
            return report
        with _training_lock(registry, deployment, fp, cfg.lock_timeout_s):
            record = read_json(registry, runs) or {}
            if _already_done(registry, report, record, champion, fp, started):   # an overlapping run decided it
                return report
            version = record.get("challenger")
            if version and _published(registry, version):
                report.challenger_reused = True
            else:
                version = _train_and_publish(registry, history, preset, train_start, hold_start, fp, deployment,
                                             cfg.min_train_coverage)
                write_json(registry, runs, {"fingerprint": fp, "challenger": version, "trained_at": _wall().isoformat(),
                                            "span": report.train_span})
        report.challenger = {"version": version, "metrics": None}
        arts["challenger"] = load_artifact(registry.artifact_path(version))
        report.training = _training_summary(arts["challenger"])
        events = load_labels(cfg.labels, hold_start, now_ns) if cfg.labels else []
        ch_metrics, scores["challenger"] = evaluate(version, registry.artifact_path(version), history_at,
                                                    hold_start, now_ns, cfg.device, events)
        report.challenger["metrics"], thresholds["challenger"] = ch_metrics.to_dict(), ch_metrics.threshold_median
        if ch_metrics.windows < cfg.min_holdout_windows:
            raise DataError(f"the holdout {report.holdout_span[0]} .. {report.holdout_span[1]} gave "
                            f"{ch_metrics.windows} windows, fewer than retrain.min_holdout_windows="
                            f"{cfg.min_holdout_windows}: is the history ({history_at}) up to date?")
        champ_metrics = None
        blocker = swap_blocker(arts["champion"], arts["challenger"]) if champion else None
        if champion:
            try:
                champ_metrics, scores["champion"] = evaluate(champion, registry.artifact_path(champion), history_at,
                                                             hold_start, now_ns, cfg.device, events)
            except (DataError, ArtifactError) as exc:
                if not blocker:
                    raise
                del arts["champion"]   # a retired sensor: the champion cannot read the holdout; not promoted
                blocker += f" (the champion cannot be scored on the holdout: {masked_text(exc)})"
        shares = faults.measure(history_at, _iso(hold_start), _iso(now_ns), arts, cfg.device, cfg.seed)
        ch_metrics = replace(ch_metrics, fault_detection=shares["challenger"])
        report.challenger["metrics"] = ch_metrics.to_dict()
        if champ_metrics is not None:
            champ_metrics = replace(champ_metrics, fault_detection=shares["champion"])
            report.champion["metrics"], thresholds["champion"] = champ_metrics.to_dict(), champ_metrics.threshold_median
        decision = decide(rule, ch_metrics, champ_metrics)
        if blocker:   # named whatever the rule decided: a new sensor in the archive is news to an operator
            decision = Decision(False, [blocker, *(decision.reasons if champ_metrics is not None else [])])
        report.reasons = decision.reasons
        if decision.promote:
            report.promotion = registry.promote(deployment, version, expect=champion,
                                                reason=f"retrain {report.run_id}: " + "; ".join(decision.reasons[:3]))
        report.decision = "promoted" if decision.promote else "kept_champion"
        write_json(registry, runs, {**record, "fingerprint": fp, "challenger": version, "decision": report.decision,
                                    "decided_at": _wall().isoformat(), "champion_at_start": champion})
        write_json(registry, f"{STATE_DIR}/{deployment}/last.json",
                   {"ran_at": _wall().isoformat(), "started_at": started.isoformat(), "run_id": report.run_id,
                    "decision": report.decision, "challenger": version, "champion_at_start": champion})
    except (PromotionConflict, RetrainBusy) as exc:
        mine = (report.challenger or {}).get("version")
        if isinstance(exc, PromotionConflict) and mine and registry.current(deployment) == mine:
            report.decision = "already_done"   # an overlapping run of the same data promoted it: its report stays
            report.reasons = [f"an overlapping run of the same data promoted {mine} meanwhile; nothing done"]
            report.finished_at = _wall().isoformat()
            return report
        report.decision, report.error = "conflict", masked_text(exc)
        _finish(report, cfg.report_dir, scores, thresholds)
        raise
    except Exception as exc:   # ours, or the unforeseen (a registry's OSError, CUDA out of memory): reported
        report.decision, report.error = "failed", masked_text(exc if isinstance(exc, StreamAEError) else repr(exc))
        _finish(report, cfg.report_dir, scores, thresholds)
        raise
    _finish(report, cfg.report_dir, scores, thresholds)
    log.info(report.summary())
    return report


def _already_done(registry: Registry, report: RetrainReport, record: dict, champion, fp: str, started) -> bool:
    """Whether the run of fingerprint ``fp`` was decided (``record``), or its challenger serves
    (promoted, then cut short): ``report`` says so, and ``last.json`` is brought up to date if
    the cut-short run could not write it (else the schedule would train again)."""
    decided = record.get("decision") in ("promoted", "kept_champion")
    if not (decided or (champion and champion == record.get("challenger"))):
        return False
    decision = record.get("decision", "promoted")
    report.decision, report.challenger = "already_done", {"version": record.get("challenger"), "metrics": None}
    report.reasons = [f"this run (fingerprint {fp[:12]}) was already decided: "
                      f"{decision} at {record.get('decided_at', '?')}; nothing done"]
    last_at = f"{STATE_DIR}/{report.deployment}/last.json"
    last = read_json(registry, last_at) or {}
    if last.get("started_at", last.get("ran_at", "")) < record.get("trained_at", ""):   # its own never written
        write_json(registry, last_at, {"ran_at": _wall().isoformat(), "started_at": started.isoformat(),
                                       "run_id": report.run_id, "decision": decision,
                                       "challenger": record.get("challenger"), "champion_at_start": champion})
    report.finished_at = _wall().isoformat()
    return True


def _published(registry: Registry, version: str) -> bool:
    try:
        registry.artifact_path(version)
    except ConfigError:
        return False
    return True


def _training_summary(artifact) -> dict:
    """What the challenger was trained on: rows, entities, first/last reading, the span's coverage."""
    t = artifact.training
    return {"rows": t.get("rows"), "entities": len(t.get("entities") or ()), "span": t.get("span"),
            "coverage": t.get("coverage"), "windows": (t.get("windows") or {}).get("train")}


def _train_and_publish(registry, history, preset, start: int, end: int, fp: str, deployment: str,
                       min_coverage: float) -> str:
    from stream_ae.training import train

    log.info("training a challenger for %r on %s .. %s", deployment, _iso(start), _iso(end))
    artifact = train(history, history.layout, preset.window, preset.model, preset.train, preset.threshold,
                     start=_iso(start), end=_iso(end),   # ISO strings: error messages name readable times
                     detrend=preset.detrend, min_coverage=min_coverage)
    artifact.training["retrain"] = {"fingerprint": fp, "deployment": deployment, "preset": preset.name}
    return registry.publish(artifact)


def _finish(report: RetrainReport, report_dir, scores: dict, thresholds: dict) -> None:
    report.finished_at = _wall().isoformat()
    if scores:
        labels = {"challenger": f"challenger {(report.challenger or {}).get('version')}",
                  "champion": f"champion {(report.champion or {}).get('version')}"}
        report.plot_path = str(plot_scores(
            os.path.join(report_dir, f"{report.run_id}.png"), {labels[k]: v for k, v in scores.items()},
            {labels[k]: v for k, v in thresholds.items()},
            f"{report.deployment} holdout {report.holdout_span[0]} .. {report.holdout_span[1]}: {report.decision}"))
    write_report(report, report_dir)
