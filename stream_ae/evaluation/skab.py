"""SKAB (Skoltech Anomaly Benchmark): the two evaluation protocols (the files: ``skab_data.py``).

Protocol A (the published one): per labelled file, train on the first 400 rows, test on
the rest; point-wise metrics pooled over every test point of all 34 files.
Protocol B: train once on ``anomaly-free/anomaly-free.csv``, test every labelled file whole.

Evaluation goes through the project's one scoring path, exactly as the stream would:
``SeriesWindower.push`` -> ``Scorer.score_rows`` -> ``Threshold.step_many`` -> the preset's
causal alert rule. A point is judged by the window that ends on it, the threshold's value
at that moment and an alert state that looks only backwards. No test label chooses anything.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from stream_ae.data.layout import Layout
from stream_ae.data.windows import SeriesWindower
from stream_ae.errors import DataError
from stream_ae.evaluation.skab_data import SKAB_CHANNELS, SkabFile, load_anomaly_free, load_skab, skab_files

if TYPE_CHECKING:
    from stream_ae.artifact import Artifact
    from stream_ae.presets import Preset
    from stream_ae.scoring import Scorer

TRAIN_ROWS = 400  # protocol A: rows of each file used for training (SKAB's split)
PROTOCOLS = ("A", "B")


# -- fitting and running one detector, through the project's scoring path ------------------

@dataclass
class Detector:
    """A fitted model (as an Artifact), its Scorer and its calibrated threshold state."""

    artifact: "Artifact"
    scorer: "Scorer"
    threshold_state: dict
    val_scores: np.ndarray  # (V,) held-out scores the threshold was calibrated on
    history: dict  # fit_autoencoder's history


def fit_detector(train: SkabFile, preset: "Preset", device: str = "cpu", seed: int = 0,
                 precision: str = "fp32", progress: bool = False) -> Detector:
    """Fit ``preset`` on ``train``: time split, scaler on the fit part, autoencoder, threshold
    (``progress``: the trainer's bar, for protocol B's one long training).

    As ``stream-ae train`` does, the threshold is calibrated on fp32 scores; ``precision`` is
    the precision the detector then scores at (as ``model.precision`` in the stream).

    Windows ending before the cut (``1 - preset.val_fraction`` of the rows) train the model;
    windows starting at or after it are held out: they stop training early and calibrate the
    threshold, so the threshold sees errors on data the model has not learned.
    """
    from stream_ae.artifact import FORMAT_VERSION, Artifact, make_version, utc_now, weights_bytes
    from stream_ae.models import build_model
    from stream_ae.models.config import channel_indices
    from stream_ae.scaling import ChannelScaler
    from stream_ae.scoring import Scorer
    from stream_ae.thresholds import build_threshold
    from stream_ae.training import WindowSet, fit_autoencoder
    from stream_ae import __version__

    spec = preset.window
    batch = SeriesWindower(spec, len(SKAB_CHANNELS)).push(train.ts, train.values)
    cut_ts = train.ts[int(len(train) * (1 - preset.val_fraction))]
    fit_w, val_w = batch.end_ts < cut_ts, batch.start_ts >= cut_ts
    if fit_w.sum() < 16 or val_w.sum() < 10:
        raise DataError(f"{train.name}: {len(train)} rows give {fit_w.sum()} training and {val_w.sum()} "
                        f"held-out windows of {spec.length}; need >= 16 and >= 10 (shorten the window)")
    fit_rows = batch.rows[: int(batch.starts[fit_w].max()) + spec.length]
    scaler = ChannelScaler().fit(fit_rows)
    scaled = scaler.transform(batch.rows)

    def window_set(mask) -> WindowSet:
        n = int(mask.sum())
        return WindowSet(scaled, batch.starts[mask], spec.length, batch.start_ts[mask],
                         batch.end_ts[mask], np.full(n, train.name, dtype=object))

    config = dataclasses.replace(preset.model, n_channels=len(SKAB_CHANNELS), window=spec.length,
                                 detrend=channel_indices(preset.detrend, SKAB_CHANNELS))
    train_config = dataclasses.replace(preset.train, seed=seed, device=device, progress=progress)
    torch.manual_seed(seed)
    model = build_model(config)
    history = fit_autoencoder(model, window_set(fit_w), window_set(val_w), train_config)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    created = utc_now()
    artifact = Artifact(
        version=make_version(config, created, weights_bytes(state)), model=config, window=spec,
        layout=Layout(timestamp="datetime", channels=SKAB_CHANNELS), channels=SKAB_CHANNELS,
        scaler=scaler, threshold={}, training={"source": train.name}, state_dict=state,
        created_at=created, package_version=__version__, format_version=FORMAT_VERSION)
    scorer = Scorer(artifact, device=device)
    threshold = build_threshold(preset.threshold)
    val_scores = scorer.score_rows(batch.rows, batch.starts[val_w]).score
    if precision != "fp32":
        scorer = Scorer(artifact, device=device, precision=precision)
    threshold.fit(val_scores)
    artifact.threshold = {"spec": preset.threshold.to_dict(), "state": threshold.state_dict()}
    return Detector(artifact, scorer, threshold.state_dict(), val_scores, history)


@dataclass
class FileRun:
    """Point-wise outcome of one file (``N`` rows; ``test`` marks the judged points)."""

    name: str
    ts: np.ndarray  # (N,) int64 ns
    values: np.ndarray  # (N, C) raw
    anomaly: np.ndarray  # (N,) bool labels
    changepoint: np.ndarray  # (N,) bool labels
    test: np.ndarray  # (N,) bool: points scored by the protocol
    score: np.ndarray  # (N,) float: score of the window ending at the point (NaN: none)
    threshold: np.ndarray  # (N,) float: threshold value that window was compared with
    window_flag: np.ndarray  # (N,) bool: threshold decision of that window
    alert: np.ndarray  # (N,) bool: alert open after that window (the point's decision)


@dataclass
class ScoredFile:
    """Scores of the windows whose decisions a protocol judges (thresholding not yet applied)."""

    file: SkabFile
    test_from: int
    end_index: np.ndarray  # (B,) row each window ends on
    end_ts: np.ndarray  # (B,) int64 ns
    score: np.ndarray  # (B,)
    channel_error: np.ndarray  # (B, C)


def score_file(detector: Detector, file: SkabFile, preset: "Preset", test_from: int = 0) -> ScoredFile:
    """Windows of ``file`` (whole, as the stream would see it) scored by the one Scorer.

    Rows before ``test_from`` only fill the first windows (history the stream would have);
    only windows ending at or after row ``test_from`` are scored.
    """
    batch = SeriesWindower(preset.window, len(SKAB_CHANNELS)).push(file.ts, file.values)
    keep = batch.end_index >= test_from
    scored = detector.scorer.score_rows(batch.rows, batch.starts[keep])
    return ScoredFile(file, test_from, batch.end_index[keep], batch.end_ts[keep],
                      scored.score, scored.channel_error)


def decide(scored: ScoredFile, threshold_state: dict, preset: "Preset", version: str = "skab") -> FileRun:
    """Threshold the scores in order and run the alert lifecycle; a point's decision is
    whether an alert is open after the window that ends on it (causal by construction)."""
    from stream_ae.alerts import AlertTracker
    from stream_ae.thresholds import build_threshold

    f, ends, end_ts = scored.file, scored.end_index, scored.end_ts
    threshold = build_threshold(preset.threshold)
    threshold.load_state_dict(threshold_state)
    flags, values = threshold.step_many(scored.score)
    tracker = AlertTracker(preset.alert)
    events = tracker.observe_many(f.name, end_ts, scored.score, values, flags,
                                  scored.channel_error, SKAB_CHANNELS, version)
    open_now = np.zeros(len(ends), bool)  # alert state after each window
    for ev in events:
        open_now[int(np.searchsorted(end_ts, ev.at)):] = ev.state != "resolved"
    n = len(f)
    score, value = np.full(n, np.nan), np.full(n, np.nan)
    wflag, alert = np.zeros(n, bool), np.zeros(n, bool)
    score[ends], value[ends], wflag[ends], alert[ends] = scored.score, values, flags, open_now
    test = np.zeros(n, bool)
    test[scored.test_from:] = True
    return FileRun(f.name, f.ts, f.values, f.anomaly, f.changepoint, test, score, value, wflag, alert)


def run_file(detector: Detector, file: SkabFile, preset: "Preset", test_from: int = 0) -> FileRun:
    """Stream ``file`` through windower -> scorer -> threshold -> alert tracker."""
    scored = score_file(detector, file, preset, test_from)
    return decide(scored, detector.threshold_state, preset, detector.artifact.version)


# -- the protocols ----------------------------------------------------------------------

def _summarise(runs: list[FileRun]) -> dict:
    from stream_ae.evaluation.metrics import Confusion, NabTally, confusion, nab_score, nab_tally

    pooled, tally = Confusion(), NabTally()
    per_file = {}
    for r in runs:
        c = confusion(r.anomaly[r.test], r.alert[r.test])
        pooled, tally = pooled + c, tally + nab_tally(r.ts[r.test], r.changepoint[r.test], r.alert[r.test])
        per_file[r.name] = c.as_dict()
    return {**pooled.as_dict(), "nab": nab_score(tally), "per_file": per_file}


def run_protocol(protocol: str, files: list[SkabFile], preset: "Preset", data_dir=None,
                 device: str = "cpu", seed: int = 0, progress: bool = True,
                 precision: str = "fp32") -> tuple[dict, list[FileRun]]:
    """Run protocol ``"A"`` or ``"B"`` for one preset: ``(metrics, per-file runs)``."""
    from tqdm.auto import tqdm

    if protocol not in PROTOCOLS:
        raise DataError(f"unknown SKAB protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    desc = f"SKAB {protocol} {preset.name}/{preset.model.variant}"
    runs = []
    if protocol == "B":
        # 20x the windows of a protocol-A slice: the trainer's default batch of 256 keeps the
        # number of optimiser steps per epoch (and the run time) in the same range
        big = dataclasses.replace(preset, train=dataclasses.replace(preset.train, batch_size=256))
        detector = fit_detector(load_anomaly_free(data_dir), big, device, seed, precision, progress)
    for f in tqdm(files, desc=desc, unit="file", disable=not progress, leave=False):
        if protocol == "A":
            detector = fit_detector(f.head(TRAIN_ROWS), preset, device, seed, precision)
            runs.append(run_file(detector, f, preset, test_from=TRAIN_ROWS))
        else:
            runs.append(run_file(detector, f, preset, test_from=0))
    return _summarise(runs), runs


def evaluate(data_dir, model_kinds=("conv",), variants=("undercomplete",), protocols=("A",),
             files: list[str] | None = None, device: str = "cpu", seed: int = 0,
             progress: bool = True, presets: dict | None = None, num_threads: int = 1,
             precision: str = "fp32", variant_options: dict | None = None) -> dict:
    """Evaluate presets on SKAB.

    Returns ``{kind: {variant: {protocol: result}}}`` where ``result`` holds ``f1``, ``far``,
    ``mar`` (fractions, pooled over every test point), ``tp/fp/tn/fn``, ``nab``
    (``standard``, ``low_fp``, ``low_fn``), ``per_file`` metrics, ``preset`` (its settings),
    ``seconds`` and ``runs`` (the per-file :class:`FileRun` series, for plotting; drop them
    before writing JSON, see :func:`results_to_json`). ``presets`` overrides the named presets
    by kind (for experiments); ``num_threads`` caps torch's CPU threads during the run;
    ``precision`` is the scoring precision (:func:`fit_detector`); ``variant_options``:
    ``{variant: {option: value}}`` (``variant_options.given_per_variant``), kept in each
    result's ``preset``.
    """
    skab = load_skab(data_dir, files)
    out: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)  # models this small gain nothing from more threads
    try:
        _evaluate_all(out, skab, data_dir, model_kinds, variants, protocols, device, seed, progress, presets,
                      precision, variant_options or {})
    finally:
        torch.set_num_threads(threads)
    return out


def _evaluate_all(out, skab, data_dir, model_kinds, variants, protocols, device, seed, progress, presets,
                  precision="fp32", variant_options=None):
    import dataclasses
    import time

    from stream_ae.presets import skab_preset

    for kind in model_kinds:
        for variant in variants:
            base = (presets or {}).get(kind) or skab_preset(kind)
            preset = base.with_variant(variant)
            preset = preset.replace(model=dataclasses.replace(preset.model, **(variant_options or {}).get(variant, {})))
            for protocol in protocols:
                t0 = time.perf_counter()
                metrics, runs = run_protocol(protocol, skab, preset, data_dir, device, seed, progress, precision)
                metrics.update(preset=preset.to_dict(), precision=precision, seed=seed,
                               preset_chosen_on_these_labels=not (presets or {}).get(kind),
                               seconds=time.perf_counter() - t0,
                               runs=runs)
                out.setdefault(kind, {}).setdefault(variant, {})[protocol] = metrics


def results_to_json(results: dict) -> dict:
    """``evaluate``'s results without the per-file series (a NaN figure is written as null)."""
    return {k: {v: {p: {key: val for key, val in r.items() if key != "runs"}
                    for p, r in by_p.items()} for v, by_p in by_v.items()}
            for k, by_v in results.items()}


_PROTOCOL_NAMES = {"published": ("A",), "a": ("A",), "anomaly-free": ("B",), "b": ("B",), "all": ("A", "B")}


def run_skab_cli(args) -> int:
    """``stream-ae evaluate skab``: evaluate, print a table, write ``--json`` / ``--plot``.

    Reads ``args.data``, ``.model`` ("conv", "lstm" or "conv,lstm"), ``.variant`` (comma list
    or "all"), ``.protocol`` ("published" = A, "anomaly-free" = B, or "all"), ``.json_path``,
    ``.plot``, ``.plot_file`` (e.g. "valve1/1.csv"), ``.device``, ``.seed``, ``.precision`` and
    ``.no_progress``.
    """
    from stream_ae.cli_flags import variant_flag
    from stream_ae.errors import ConfigError
    from stream_ae.evaluation.plot import plot_file_run
    from stream_ae.jsontext import dumps
    from stream_ae.models.config import VARIANTS
    from stream_ae.training.trainer import check_seed
    from stream_ae.variant_options import OPTIONS, given_per_variant

    kinds = [k.strip() for k in str(getattr(args, "model", "conv")).split(",") if k.strip()]
    variant_arg = str(getattr(args, "variant", "undercomplete"))
    variants = list(VARIANTS) if variant_arg == "all" else [v.strip() for v in variant_arg.split(",") if v.strip()]
    proto_arg = str(getattr(args, "protocol", "all")).lower()
    if proto_arg not in _PROTOCOL_NAMES:
        raise ConfigError(f"--protocol {proto_arg!r} is unknown; choose published, anomaly-free or all")
    if not kinds or not variants:
        raise ConfigError("--model and --variant each need at least one name, e.g. --model conv "
                          "--variant undercomplete")
    seed = check_seed(int(getattr(args, "seed", 0)), "--seed ")
    wanted = _preflight(args, kinds, variants)   # before the minutes of evaluation, not after some of them
    options = given_per_variant(variants, {k: getattr(args, k, None) for k in OPTIONS}, spell=variant_flag)
    results = evaluate(args.data, kinds, variants, _PROTOCOL_NAMES[proto_arg],
                       device=getattr(args, "device", "cpu"), seed=seed,
                       progress=not getattr(args, "no_progress", False),
                       precision=getattr(args, "precision", "fp32"), variant_options=options)
    print(f"{'model':6} {'variant':14} {'protocol':8} {'F1':>6} {'FAR%':>7} {'MAR%':>7} "
          f"{'NAB std':>8} {'low FP':>8} {'low FN':>8} {'time s':>7}")
    for kind, by_v in results.items():
        for variant, by_p in by_v.items():
            for protocol, r in by_p.items():
                n = r["nab"]
                print(f"{kind:6} {variant:14} {protocol:8} {r['f1']:6.3f} {100 * r['far']:7.2f} "
                      f"{100 * r['mar']:7.2f} {n['standard']:8.2f} {n['low_fp']:8.2f} "
                      f"{n['low_fn']:8.2f} {r['seconds']:7.1f}")
    print("The SKAB preset's threshold, alert rule, detrended channels and scored steps were chosen on these "
          "files' labels,\nso these are not held-out figures; docs/skab-results.md has a split-half check "
          "of that choice, with its F1, FAR and MAR.")
    if getattr(args, "json_path", None):
        Path(args.json_path).write_text(dumps(results_to_json(results), indent=2))
    if wanted is not None:
        kind, by_v = next(iter(results.items()))
        variant, by_p = next(iter(by_v.items()))
        protocol, r = next(iter(by_p.items()))
        match = [run for run in r["runs"] if run.name == wanted]
        if not match:
            raise DataError(f"--plot-file {wanted!r} was not evaluated; use a name like valve1/1.csv")
        plot_file_run(match[0], args.plot, SKAB_CHANNELS,
                      title=f"SKAB {wanted}: {kind}/{variant}, protocol {protocol}")
    return 0


def _preflight(args, kinds, variants) -> str | None:
    """Every model, variant, the plot's file, the precision and the output folders exist, or a
    ConfigError says which; returns the name of the file to plot (None: no ``--plot``)."""
    from stream_ae.errors import ConfigError
    from stream_ae.figures import picture_format
    from stream_ae.models.config import VARIANTS
    from stream_ae.presets import get_preset
    from stream_ae.scoring import check_precision, resolve_device

    for kind in kinds:
        get_preset(kind)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variant {', '.join(unknown)}: unknown; choose from {', '.join(VARIANTS)} or all")
    check_precision(getattr(args, "precision", "fp32"), resolve_device(getattr(args, "device", "cpu")))
    for flag, target in (("--json", getattr(args, "json_path", None)), ("--plot", getattr(args, "plot", None))):
        if target and not Path(target).resolve().parent.is_dir():
            raise ConfigError(f"{flag} {target}: the folder {Path(target).parent} does not exist; create it first")
    if not getattr(args, "plot", None):
        return None
    picture_format(args.plot, "--plot")
    wanted = str(getattr(args, "plot_file", "valve1/1.csv")).removesuffix(".csv")
    names = [name for name, _ in skab_files(args.data)]
    if wanted not in names:
        raise ConfigError(f"--plot-file {wanted!r} is not a labelled SKAB file; use one like {names[0]}.csv")
    return wanted
