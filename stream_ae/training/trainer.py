"""Training: History -> time-split windows -> fitted autoencoder -> Artifact."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from stream_ae.progress import progress_bar

from stream_ae import __version__ as PACKAGE_VERSION
from stream_ae.artifact import FORMAT_VERSION, Artifact, make_version, utc_now, weights_bytes
from stream_ae.data.history import History
from stream_ae.drift import REFERENCE_METRIC, reference_level
from stream_ae.errors import ConfigError, DataError
from stream_ae.models import build_model, window_errors
from stream_ae.models.config import channel_indices
from stream_ae.scaling import ChannelScaler
from stream_ae.scoring import Scorer, resolve_device
from stream_ae.thresholds.base import build_threshold, threshold_to_dict
from stream_ae.training.checks import calibration_warnings, gap_warnings, spread_warnings
from stream_ae.training.sampling import WindowSet, sample_windows

log = logging.getLogger(__name__)

MIN_TRAIN_WINDOWS = 16
MIN_VAL_WINDOWS = 16
VAL_QUANTILES = (0.5, 0.9, 0.99, 0.999)


def check_seed(seed: int, name: str = "the seed ") -> int:
    """``seed`` when numpy and torch both take it, else a ConfigError naming ``name``."""
    if not 0 <= seed < 2**32:
        raise ConfigError(f"{name}must lie in [0, 2**32), got {seed}")
    return seed


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the model's hyperparameters live in ModelConfig)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5  # epochs without a better validation loss before stopping
    val_fraction: float = 0.2
    max_windows: int = 200_000
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # CUDA only: bf16 autocast (fp16 + GradScaler where bf16 is unsupported)
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.max_windows) < 2:   # one training and one validation window at the least
            raise ConfigError(f"TrainConfig.max_windows must be >= 2, got {self.max_windows}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"TrainConfig.val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError("TrainConfig.lr must be > 0 and weight_decay >= 0")
        check_seed(int(self.seed))
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"TrainConfig.num_threads must be >= 1 or None, got {self.num_threads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_window_set(windows) -> WindowSet:
    if isinstance(windows, WindowSet):
        return windows
    if isinstance(windows, torch.Tensor):
        windows = windows.detach().cpu().numpy()
    return WindowSet.from_windows(windows)


def _amp_dtype(device: torch.device, amp: bool):
    """bf16 on a GPU that computes in it (Ampere, compute capability 8, and later), else fp16 with
    a gradient scaler. Not ``torch.cuda.is_bf16_supported()``: it says yes for the emulated bf16 of
    a V100 or T4, and it reads the current device, not the one training runs on."""
    if not amp or device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.bfloat16 if torch.cuda.get_device_capability(index)[0] >= 8 else torch.float16


def _val_loss(model, rows: torch.Tensor, starts: torch.Tensor, offsets: torch.Tensor, batch: int) -> float:
    """Mean reconstruction error over the validation windows (fp32, eval mode)."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=rows.device)
    with torch.inference_mode():
        for lo in range(0, starts.shape[0], batch):
            x = model.view(rows[starts[lo:lo + batch, None] + offsets])  # (b, T, C)
            total += window_errors(x, model(x))[0].double().sum()  # the training objective: every step
    return float(total) / max(1, starts.shape[0])


def fit_autoencoder(model, train_windows, val_windows, train_config: TrainConfig) -> dict:
    """Fit ``model`` on scaled windows with Adam and early stopping; keep the best weights.

    ``train_windows`` / ``val_windows``: a :class:`WindowSet` or a (B, T, C) array, already
    scaled. Returns a history dict: per-epoch ``train_loss``, ``val_loss``, ``parts`` (the
    variant's loss terms), ``best_epoch``, ``best_val_loss``, ``epochs_run``, ``stopped_early``,
    ``fit_seconds`` (the epochs, validation included) and ``windows_per_s`` (training windows
    seen per second of it).
    Same seed, same data, same ``num_threads`` -> bitwise-identical weights on CPU (the
    thread count changes how sums are split); ``num_threads`` is applied here too, not only
    by :func:`train`.
    """
    with _torch_threads(train_config.num_threads):
        return _fit(model, train_windows, val_windows, train_config)


def _fit(model, train_windows, val_windows, train_config: TrainConfig) -> dict:
    cfg = train_config
    device = resolve_device(cfg.device)
    train, val = _as_window_set(train_windows), _as_window_set(val_windows)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"need training and validation windows, got {len(train)} and {len(val)}")
    if val.length != train.length:
        raise DataError(f"validation windows have {val.length} steps and training windows {train.length}; "
                        "give both the model's window length")
    for name, ws in (("training", train), ("validation", val)):
        if not np.isfinite(ws.rows).all():
            raise DataError(f"the {name} windows hold NaN or infinite values; fill or drop them first "
                            "(train() does: SeriesWindower fills short runs and breaks windows at longer ones)")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x_train = torch.from_numpy(np.ascontiguousarray(train.rows, dtype=np.float32)).to(device)  # (N, C)
    s_train = torch.from_numpy(train.starts).to(device)  # (B,)
    x_val = torch.from_numpy(np.ascontiguousarray(val.rows, dtype=np.float32)).to(device)
    s_val = torch.from_numpy(val.starts).to(device)
    offsets = torch.arange(train.length, device=device)  # (T,)
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = _amp_dtype(device, cfg.amp)
    grad_scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    n, bs = len(train), cfg.batch_size
    n_batches = math.ceil(n / bs)
    history = {"train_loss": [], "val_loss": [], "parts": [], "best_epoch": 0,
               "best_val_loss": math.inf, "epochs_run": 0, "stopped_early": False}
    best_state, bad_epochs = None, 0
    bar = progress_bar(cfg.progress, total=cfg.epochs * n_batches, unit="batch", leave=False)
    started = time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            bar.set_description(f"epoch {epoch}/{cfg.epochs}")
            perm = torch.from_numpy(rng.permutation(n)).to(device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            part_sums: dict[str, float] = {}
            for lo in range(0, n, bs):
                idx = perm[lo:lo + bs]
                x = x_train[s_train[idx, None] + offsets]  # (b, T, C)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, parts = model.training_loss(x)
                optimiser.zero_grad(set_to_none=True)
                grad_scaler.scale(loss).backward()
                grad_scaler.step(optimiser)
                grad_scaler.update()
                loss_sum += loss.detach().double() * idx.shape[0]
                for key, value in parts.items():
                    part_sums[key] = part_sums.get(key, 0.0) + float(value) * idx.shape[0]
                bar.update(1)
            train_loss = float(loss_sum) / n
            if not math.isfinite(train_loss):
                raise DataError(
                    f"training diverged at epoch {epoch} (loss {train_loss}); lower TrainConfig.lr or "
                    "check the data for extreme values"
                )
            val_loss = _val_loss(model, x_val, s_val, offsets, max(bs, 1024))
            if not math.isfinite(val_loss):
                raise DataError(f"validation loss is {val_loss} at epoch {epoch}; the validation windows "
                                "hold NaN/inf values, or readings too large for float32 arithmetic (a sensor's "
                                "error code such as 1e25: remove them), or the model diverged")
            parts_mean = {k: v / n for k, v in part_sums.items()}
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            history["parts"].append(parts_mean)
            history["epochs_run"] = epoch
            bar.set_postfix({"train": f"{train_loss:.4g}", **{k: f"{v:.3g}" for k, v in parts_mean.items() if k != "loss"},
                             "val": f"{val_loss:.4g}"}, refresh=False)
            if val_loss < history["best_val_loss"]:
                history["best_val_loss"], history["best_epoch"] = val_loss, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bad_epochs = 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    history["stopped_early"] = epoch < cfg.epochs
                    break
    finally:
        bar.close()
    history["fit_seconds"] = time.perf_counter() - started
    history["windows_per_s"] = history["epochs_run"] * n / max(history["fit_seconds"], 1e-9)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def _check_counts(train: WindowSet, val: WindowSet, stats: dict, needed_val: int) -> None:
    if len(train) >= MIN_TRAIN_WINDOWS and len(val) >= needed_val:
        return
    w = stats["windows"]
    sparse = [f"{c!r} has no value in {100 * f:.0f} %" for c, f in stats.get("missing", {}).items() if f >= 0.2]
    cause = (f"; a gap breaks a window, and of the rows read {', '.join(sparse)}: leave such a channel out "
             "(--channels) or train on a span where it reports" if sparse else "")
    raise DataError(
        f"too few windows to train: {len(train)} training (need >= {MIN_TRAIN_WINDOWS}) and "
        f"{len(val)} validation (need >= {needed_val}); found {w['found_train']} before and "
        f"{w['found_val']} after the split at {stats['cut']} over {stats['rows']} rows of "
        f"{len(stats['entities'])} entities{cause}. Otherwise widen the time span (--start/--end), shorten the window "
        "(--window), lower the hop (--hop), allow longer gaps (--max-gap), or raise --max-windows "
        "(in Python: WindowSpec length, hop, max_gap_s, max_fill, TrainConfig max_windows, val_fraction)"
    )


def train(history, layout, window_spec, model_config, train_config: TrainConfig, threshold_spec,
          start=None, end=None, detrend: tuple[str, ...] = (), min_coverage: float = 0.0) -> Artifact:
    """Train an autoencoder on a History (or a URI) and return a calibrated Artifact.

    ``min_coverage``: stop with :class:`DataError` before fitting when the readings cover less
    than this share of ``start .. end`` (:func:`~stream_ae.training.sampling.sample_windows`).

    The scaler is fitted on the training split only; the threshold is calibrated on the
    validation windows' scores, computed with :class:`~stream_ae.scoring.Scorer` (the one
    scoring path). ``model_config.n_channels`` and ``.window`` are set from the data and
    ``window_spec``; ``detrend`` channel names become ``model_config.detrend`` positions.
    """
    cfg = train_config
    resolve_device(cfg.device)   # a bad device stops here, not after two passes over the history
    if not isinstance(history, History):
        history = History.open(str(history), layout, start=start, end=end)
    channels = tuple(history.channels)
    layout = history.layout  # the layout the rows were actually read with
    detrend_at = channel_indices(detrend, channels) if detrend else model_config.detrend
    # the model this data makes, checked before the passes over the history
    config = dataclasses.replace(model_config, n_channels=len(channels), window=int(window_spec.length),
                                 detrend=detrend_at)
    with _torch_threads(cfg.num_threads):
        train_set, val_set, stats = sample_windows(
            history, layout, window_spec, channels, cfg.max_windows, cfg.seed,
            start=start, end=end, val_fraction=cfg.val_fraction, min_coverage=min_coverage, progress=cfg.progress)
        _check_counts(train_set, val_set, stats, max(MIN_VAL_WINDOWS, int(getattr(threshold_spec, "warmup", 0))))
        scaler = ChannelScaler().fit(train_set.rows)
        torch.manual_seed(cfg.seed)
        model = build_model(config)
        fit = fit_autoencoder(model, train_set.with_rows(scaler.transform(train_set.rows)),
                              val_set.with_rows(scaler.transform(val_set.rows)), cfg)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        created = utc_now()
        artifact = Artifact(
            version=make_version(config, created, weights_bytes(state)), model=config,
            window=window_spec, layout=layout, channels=channels, scaler=scaler, threshold={},
            training={}, state_dict=state, created_at=created, package_version=PACKAGE_VERSION,
            format_version=FORMAT_VERSION)
        val_scores = Scorer(artifact, device=cfg.device).score_rows(val_set.rows, val_set.starts).score
        threshold = build_threshold(threshold_spec)
        threshold.fit(val_scores)
    warnings = (spread_warnings(train_set.rows, scaler.std, channels)
                + calibration_warnings(val_scores, getattr(threshold, "value", None))
                + gap_warnings(stats["gaps"]))
    for text in warnings:
        log.warning("training: %s", text)
    artifact.threshold = threshold_to_dict(threshold)
    quantiles = np.quantile(val_scores.astype(np.float64), VAL_QUANTILES)
    artifact.training = {
        "span": stats["span"], "coverage": stats["coverage"], "cut": stats["cut"], "rows": stats["rows"],
        "entities": stats["entities"], "windows": stats["windows"],
        "gaps": stats["gaps"], "duplicates_dropped": stats["duplicates_dropped"],
        "epochs": fit["epochs_run"], "best_epoch": fit["best_epoch"],
        "stopped_early": fit["stopped_early"], "train_config": cfg.to_dict(),
        "fit_seconds": round(fit["fit_seconds"], 3), "train_windows_per_s": round(fit["windows_per_s"], 1),
        "metrics": {
            "val_loss": fit["best_val_loss"],
            "train_loss": fit["train_loss"][fit["best_epoch"] - 1],   # the objective: not comparable to val_loss
            "train_recon": fit["parts"][fit["best_epoch"] - 1].get("recon"),   # its reconstruction part
            "val_score_quantiles": {str(q): float(v) for q, v in zip(VAL_QUANTILES, quantiles)},
            "val_score_max": float(val_scores.max()),
            "threshold_value": _json_float(getattr(threshold, "value", float("nan"))),
            # the level the stream's drift watch measures shifts from (stream_ae.drift)
            REFERENCE_METRIC: reference_level(val_scores, getattr(threshold, "value", None)),
        },
        "warnings": warnings,
    }
    return artifact


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
