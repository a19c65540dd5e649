"""The one scoring path: raw rows + window starts -> reconstruction scores.

The stream, the backfill and the evaluation all call :meth:`Scorer.score_rows`,
so a window scored from Parquet and the same window scored from Kafka give the
same number. Only the rows travel to the device; overlapping windows are
gathered there, never copied on the host.

The gather, the model and the window errors run as one frozen TorchScript graph
(:func:`score_graph`, traced under autocast for bf16/fp16): one call per micro-batch that
holds the GIL only to enter and leave. The eager module re-takes the GIL between every op, and in
the stream, where the Kafka thread wants it too, that made scoring about 2x slower.
The conv model runs in its polyphase form (:mod:`stream_ae.models.polyphase`: every layer a
stride-1 convolution, same sums in another order), and when the score reads only the newest
steps, it computes only the outputs those steps need. The graph gives the eager model's numbers to
float rounding (~1e-7 relative; tested for every kind and variant).
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from stream_ae.artifact import Artifact
from stream_ae.configs import PRECISIONS
from stream_ae.errors import ConfigError, DataError
from stream_ae.models import build_model, window_errors
from stream_ae.models.base import detrend_channels
from stream_ae.models.polyphase import inference_model
from stream_ae.thresholds.base import SCORE_MAX

_PRECISIONS = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))  # autocast dtype of each
log = logging.getLogger(__name__)
#: Forward passes take a multiple of this many windows (the last one repeated). oneDNN and
#: cuDNN build a kernel per input shape, ~8 ms each here: the stream's micro-batches of any
#: size 1..1024 paid that for hundreds of shapes; rounded up, they need at most 32.
SHAPE_STEP = 32


def quiet_torchscript() -> None:
    """Silence what tracing says on every model, by the warnings' text and origin alone: torch's
    deprecation notice for each ``torch.jit`` call :func:`score_graph` makes (trace, save, load,
    freeze: the reason it keeps TorchScript is in its docstring), and the LSTM module's
    ``TracerWarning`` about a tensor read as a Python bool (its shape checks; the trace is checked
    against the module anyway). Filters installed once, at import, not ``warnings.catch_warnings``
    around the trace: that swaps the process's filter list, and a hot reload traces on another
    thread than the poll loop's, whose filters it would drop or restore under it."""
    warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
    warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean", torch.jit.TracerWarning,
                            r"torch\.nn\.modules\.rnn")


quiet_torchscript()


class WindowScores(nn.Module):
    """Rows on the device + window starts -> window errors, in one module (so in one graph).

    ``forward(rows (N, C), starts (b,) int64) -> (score (b,), channel_error (b, C))``. With
    ``center`` and ``scale`` (C,), the rows are raw and scaled here as
    :meth:`ChannelScaler.transform` does, ``(x - center) / scale`` in float32; without, they
    come scaled. ``detrend_mask`` (C,) and ``score_steps`` are the model's view and scored
    steps (:class:`~stream_ae.models.config.ModelConfig` ``detrend``, ``score_steps``).
    """

    def __init__(self, model: nn.Module, length: int, center: np.ndarray | None = None,
                 scale: np.ndarray | None = None, detrend_mask: Tensor | None = None,
                 score_steps: int = 0) -> None:
        super().__init__()
        self.model = model
        self.length = int(length)
        self.score_steps = int(score_steps)
        self.detrends = detrend_mask is not None
        if self.detrends:
            self.register_buffer("detrend_mask", detrend_mask.detach().float().clone(), persistent=False)  # (C,)
        self.register_buffer("offsets", torch.arange(length), persistent=False)  # (T,) kept: device, length
        self.scales = center is not None
        if self.scales:
            self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32), persistent=False)
            self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False)

    @classmethod
    def of(cls, model: nn.Module, artifact: Artifact) -> "WindowScores":
        """The scoring module of ``artifact`` around its built ``model``: the inference form (conv:
        polyphase, only the outputs the scored steps need), its scaler, detrend and scored steps."""
        fast = inference_model(model, tail=artifact.model.score_steps)
        return cls(fast, int(artifact.model.window), *artifact.scaler.affine(),
                   detrend_mask=model.detrend_mask if artifact.model.detrend else None,
                   score_steps=artifact.model.score_steps)

    def forward(self, rows: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        if self.scales:
            rows = (rows - self.center) / self.scale  # (N, C)
        # (b, T, C) gathered on the device: each window is T * C contiguous values of the
        # sliding view, so index_select copies blocks (10-15x faster than indexing every row)
        x = rows.unfold(0, self.length, 1).transpose(1, 2).index_select(0, starts)
        if self.detrends:  # the model's view of the windows, as in training (Autoencoder.view)
            x = detrend_channels(x, self.detrend_mask)
        return window_errors(x, self.model(x), self.score_steps)


#: The unfrozen trace of each graph structure seen (bytes of ``torch.jit.save``), newest last.
_TRACES: "OrderedDict[tuple, bytes]" = OrderedDict()
_TRACES_LOCK = threading.Lock()  # a hot reload builds its Scorer on another thread than the first
TRACES_KEPT = 8


def _structure(module: WindowScores, n_channels: int, dtype, structure: str) -> tuple:
    """What a trace bakes in besides the weights: the modules, the Python-level settings, the
    tensors' names, shapes and types, the precision and the device (``structure``: the
    caller's description of the model, e.g. its configuration)."""
    tensors = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in
                    itertools.chain(module.named_parameters(), module.named_buffers()))
    return (repr(module), module.length, module.score_steps, module.detrends, module.scales, tensors,
            n_channels, str(dtype), str(module.offsets.device), structure)


def _traced(module: WindowScores, example: tuple, key: tuple) -> torch.jit.ScriptModule:
    """``module`` as an unfrozen TorchScript module with its own weights.

    ``torch.jit.trace`` registers every graph it makes in torch's process-wide compilation unit,
    which never frees them: ~3 MiB of C heap per trace of the conv preset, so every hot reload
    kept the previous model's graph. A module read back with ``torch.jit.load`` lives in a
    compilation unit of its own and is freed with it. So each structure is traced once, saved,
    and every graph is loaded from that and given the weights of the module it stands for."""
    with _TRACES_LOCK:
        template = _TRACES.get(key)
        if template is None:
            buffer = io.BytesIO()
            torch.jit.save(torch.jit.trace(module.eval(), example, check_trace=False), buffer)
            template = _TRACES[key] = buffer.getvalue()
            while len(_TRACES) > TRACES_KEPT:
                _TRACES.popitem(last=False)
        _TRACES.move_to_end(key)
    graph = torch.jit.load(io.BytesIO(template), map_location=module.offsets.device)
    mine = dict(itertools.chain(graph.named_parameters(), graph.named_buffers()))
    theirs = dict(itertools.chain(module.named_parameters(), module.named_buffers()))
    if mine.keys() != theirs.keys():
        raise RuntimeError("the saved trace's tensors differ from the module's: "
                           f"{sorted(mine.keys() ^ theirs.keys())}")
    for name, tensor in theirs.items():
        mine[name].copy_(tensor)
    return graph.eval()


def score_graph(module: WindowScores, n_channels: int, dtype: torch.dtype | None = None,
                structure: str = "") -> nn.Module:
    """``module`` traced (under ``dtype`` autocast when given) and frozen into a TorchScript
    graph; ``module`` itself if that fails (then :class:`Scorer` runs it under autocast).

    Traced under autocast, the graph holds the casts and, frozen, the weights already in
    ``dtype``. A structure traced before is not traced again (:func:`_traced`: a trace is
    never freed), so hot reloads of one architecture keep the memory flat. TorchScript is
    deprecated upstream in favour of ``torch.compile``, which here was both slower under a
    busy GIL and took ~20 s to compile per model (and again per hot reload); the eager
    fallback keeps scoring working should a torch release drop tracing. ``structure``: the
    caller's description of the model (its configuration), part of what identifies a trace.
    """
    length = int(module.offsets.shape[0])
    device = module.offsets.device
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    example = (torch.zeros(length + 1, n_channels, device=device),
               torch.zeros(2, dtype=torch.int64, device=device))
    generator = torch.Generator(device=device).manual_seed(0)
    check = (torch.randn(length + 6, n_channels, device=device, generator=generator),
             torch.tensor([5, 0, 3], device=device))  # other shapes than the trace's
    key = _structure(module, n_channels, dtype, structure)
    try:
        with torch.no_grad():
            with autocast:
                graph = torch.jit.freeze(_traced(module, example, key))
                want = module(*check)
            got = graph(*check)
        tol = 1e-5 if dtype is None else 1e-2
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * 1e-3)
    except Exception as exc:  # noqa: BLE001 - any failure only costs speed
        with _TRACES_LOCK:
            _TRACES.pop(key, None)  # a saved trace that does not fit is not offered again
        log.warning("scoring graph could not be traced (%s); scoring with the eager model",
                    str(exc).strip().splitlines()[-1][:200])
        return module
    return graph


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); emulated bf16 is slower."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError unless ``precision`` runs (natively) on ``device``."""
    if precision not in _PRECISIONS:
        raise ConfigError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    if device.type == "cuda" or precision == "fp32":
        return
    if precision == "fp16":
        raise ConfigError(f"precision 'fp16' is for CUDA only; use 'fp32' or 'bf16' on {device}")
    if not cpu_has_native_bf16():
        raise ConfigError("precision 'bf16' on the CPU needs native bf16 (AVX512-BF16 or AMX), which this "
                          "CPU lacks; use 'fp32'")


# SCORE_MAX, the score (and channel error) of a window whose error overflows float32 -- a
# reading of ~1e20 on a standardised channel does -- or comes out NaN from such an overflow, is
# the largest float32. Infinity would reach an alert's JSON as ``null`` (the schema wants a
# number, so the event could not be recognised again after a restart) and a threshold's fit as
# NaN. It is defined with the threshold contract (``thresholds.base``): no threshold learns it.


@dataclass
class ScoreBatch:
    """Scores of B windows: ``score`` (B,) and ``channel_error`` (B, C), float32, finite
    (at most :data:`SCORE_MAX`)."""

    score: np.ndarray
    channel_error: np.ndarray

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def saturated(self) -> "ScoreBatch":
        """This batch with NaN and infinity replaced by :data:`SCORE_MAX` (itself when all finite).

        >>> b = ScoreBatch(np.array([1.0, np.inf], np.float32), np.array([[1.0], [np.nan]], np.float32))
        >>> b.saturated().score.tolist() == [1.0, SCORE_MAX], bool(b.saturated().channel_error[1, 0] == SCORE_MAX)
        (True, True)
        """
        if np.isfinite(self.score).all() and np.isfinite(self.channel_error).all():
            return self
        fix = lambda a: np.nan_to_num(a, nan=SCORE_MAX, posinf=SCORE_MAX, neginf=0.0)  # noqa: E731
        return ScoreBatch(fix(self.score), fix(self.channel_error))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but no CUDA GPU is visible; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


class Scorer:
    """Score windows with an artifact's model on a device.

    Parameters
    ----------
    artifact
        A trained (or loaded) :class:`~stream_ae.artifact.Artifact`.
    device
        ``"auto"`` (cuda if available, else cpu), ``"cpu"`` or ``"cuda[:n]"``.
    batch_size
        Windows per forward pass (micro-batch), rounded up to a multiple of ``SHAPE_STEP``
        above it; scores do not depend on it from ``SHAPE_STEP`` up (below, each pass has
        another shape, and the CPU library may sum in another order: the last bits can differ).
    precision
        ``"fp32"`` (default: CPU and GPU agree to ~1e-5); ``"bf16"`` autocast on CUDA or on a
        CPU with native bf16 (1.5x faster there; scores within about 1 % of fp32, typically 0.05 %); ``"fp16"``
        autocast on CUDA. Compare scores only between runs of the same precision.
    """

    def __init__(self, artifact: Artifact, device: str = "auto", batch_size: int = 8192,
                 precision: str = "fp32"):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        check_precision(precision, self.device)
        self.artifact = artifact
        self.version = artifact.version
        self.channels = tuple(artifact.channels)
        self.window = artifact.window
        self.batch_size = int(batch_size)
        if self.batch_size > SHAPE_STEP:  # whole steps, so only the last chunk is padded
            self.batch_size = -(-self.batch_size // SHAPE_STEP) * SHAPE_STEP
        self.precision = precision
        self.length = int(artifact.model.window)
        model = build_model(artifact.model)
        model.load_state_dict(artifact.state_dict, strict=True)
        self.model = model.to(self.device).eval()
        # conv models run as stride-1 convolutions over phases, computing only the outputs the
        # score reads (same numbers; ~2.2x faster on one CPU thread for the conv preset)
        module = WindowScores.of(self.model, artifact).to(self.device).eval()
        self._graph = score_graph(module, len(self.channels), _PRECISIONS[precision],
                                  structure=json.dumps(artifact.model.to_dict(), sort_keys=True))
        # a traced graph holds its casts; the eager fallback needs the autocast context
        self._autocast = _PRECISIONS[precision] if self._graph is module else None

    def __repr__(self) -> str:
        return f"Scorer(version={self.version!r}, device={str(self.device)!r}, batch_size={self.batch_size})"

    def score_rows(self, rows: np.ndarray, starts: np.ndarray) -> ScoreBatch:
        """Score the windows ``rows[s : s + T]`` for each ``s`` in ``starts``.

        Parameters
        ----------
        rows
            (N, C) raw (unscaled) float32 readings, channel order = ``self.channels``.
        starts
            (B,) int64 row index where each window begins.
        """
        rows = np.asarray(rows, dtype=np.float32)
        starts = np.asarray(starts, dtype=np.int64)
        n_ch, length = len(self.channels), self.length
        if rows.ndim != 2 or rows.shape[1] != n_ch:
            raise DataError(f"rows must have shape (N, {n_ch}) for channels {list(self.channels)}, got {rows.shape}")
        if starts.ndim != 1:
            raise DataError(f"starts must be 1-D, got shape {starts.shape}")
        b = starts.shape[0]
        if b == 0:
            return ScoreBatch(np.zeros(0, np.float32), np.zeros((0, n_ch), np.float32))
        if starts.min() < 0 or starts.max() + length > rows.shape[0]:
            raise DataError(
                f"window starts must lie in [0, {rows.shape[0] - length}] for {rows.shape[0]} rows "
                f"and windows of {length}; got [{starts.min()}, {starts.max()}]"
            )
        x_rows = self._to_device(rows)  # (N, C) raw: the graph scales them
        pad = -b % min(SHAPE_STEP, self.batch_size)  # repeat the last window: forward passes come in few shapes
        padded = np.concatenate([starts, np.full(pad, starts[-1])]) if pad else starts  # (B + pad,)
        dtype = self._autocast
        # Every torch call from Python lets the GIL go and must win it back from the polling
        # thread; a micro-batch (<= batch_size windows) makes exactly one: the graph.
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            if b + pad <= self.batch_size:
                parts = [self._graph(x_rows, self._to_device(padded))]
            else:  # each chunk gets only the rows its windows span (sorted starts: each row scaled about once)
                parts = []
                for lo in range(0, b + pad, self.batch_size):
                    chunk = padded[lo:lo + self.batch_size]
                    first, end = int(chunk.min()), int(chunk.max()) + length
                    parts.append(self._graph(x_rows[first:end], self._to_device(chunk - first)))
        if len(parts) > 1:
            parts = [(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))]
        scores, channel = parts[0]  # (B + pad,), (B + pad, C), float32 either way
        if self.device.type != "cpu":
            scores, channel = scores.cpu(), channel.cpu()
        return ScoreBatch(scores.numpy()[:b], channel.numpy()[:b]).saturated()

    def warm_up(self, windows: int) -> "Scorer":
        """Run each forward-pass shape a call of up to ``windows`` windows can take, twice, so that
        the first micro-batches after a start or a hot reload do not pay for it; returns self.

        On CUDA a graph's first call took ~0.5 s and each new shape's first calls ~8 ms (cuDNN's
        kernel choice, TorchScript's profiling runs), against ~1.3 ms for 2 000 windows after
        (an H100; docs/performance.md). On the CPU the first calls cost what later ones do, so
        there it does nothing."""
        if self.device.type != "cuda":
            return self
        step = min(SHAPE_STEP, self.batch_size)
        top = min(-(-int(windows) // step) * step, self.batch_size)
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for size in range(step, top + 1, step):
            for extra in (0, size % 7 + 1):  # rows of another length: the graph takes any
                rows = rng.normal(size=(size + self.length - 1 + extra, len(self.channels))).astype(np.float32)
                self.score_rows(rows, np.arange(size, dtype=np.int64))
        log.info("model %s warmed up on %s for forward passes of up to %d windows in %.2f s",
                 self.version, self.device, top, time.perf_counter() - started)
        return self

    def score_windows(self, windows: np.ndarray) -> ScoreBatch:
        """Score raw windows (B, T, C); same numbers as :meth:`score_rows` on the same data."""
        w = np.asarray(windows, dtype=np.float32)
        if w.ndim != 3 or w.shape[1:] != (self.length, len(self.channels)):
            raise DataError(
                f"windows must have shape (B, {self.length}, {len(self.channels)}), got {w.shape}"
            )
        starts = np.arange(w.shape[0], dtype=np.int64) * self.length  # (B,)
        return self.score_rows(w.reshape(-1, w.shape[2]), starts)

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t
