"""The scorer alone (``stream-ae bench scoring``): windows/s of :meth:`Scorer.score_rows` with the
conv configuration that meets the SKAB target, per precision and forward-pass size.

A call scores ``windows`` overlapping windows (hop 1) of one float32 array of rows, as the
stream and the backfill hand them over: the rows' copy to the device, the gather, the model,
the errors and the scores' copy back are all in the time. The weights are the preset's initial
ones: speed depends on the architecture, not on training. Beside each figure: the graph alone
on rows already on the device (what the model costs there, no transfers), the FLOPs torch
counts for one window (convolutions and matrix products) and, on CUDA, the device's own
ceilings measured in the same run (a device-to-device copy, an fp32 and a bf16 matrix
product), so the rate can be read as a share of what the device does.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

from stream_ae.bench import emit
from stream_ae.bench.backfill import CHANNELS  # the 8 channels its configuration (_configs) detrends as SKAB's

TARGET_CUDA_WINDOWS_PER_S = 1_000_000
BATCHES = {"cuda": (2048, 8192, 32768, 131072), "cpu": (2048,)}
WINDOWS = {"cuda": 1_048_576, "cpu": 65_536}
REPEATS = 5


def preset_artifact():
    """The conv preset (newest-20-step score, window 60) on 8 channels detrended as SKAB's, with
    the preset's initial weights and a scaler fitted on standard-normal rows."""
    import torch

    from stream_ae.artifact import Artifact, make_version, utc_now, weights_bytes
    from stream_ae.bench.backfill import _configs
    from stream_ae.data.layout import Layout
    from stream_ae.models import build_model
    from stream_ae.models.config import channel_indices
    from stream_ae.scaling import ChannelScaler

    model, window, _, detrend, _ = _configs()  # the configuration that meets the SKAB target, hop 1
    channels = tuple(f"ch_{i}" for i in range(CHANNELS))
    config = dataclasses.replace(model, n_channels=CHANNELS, detrend=channel_indices(detrend, channels))
    torch.manual_seed(0)
    state = build_model(config).state_dict()
    created = utc_now()
    rows = np.random.default_rng(1).normal(size=(4096, CHANNELS)).astype(np.float32)
    return Artifact(version=make_version(config, created, weights_bytes(state)), model=config,
                    window=window, layout=Layout(), channels=channels,
                    scaler=ChannelScaler().fit(rows), threshold={"spec": {}, "state": {}}, training={},
                    state_dict=state, created_at=created)


def flops_per_window(artifact, n: int = 1024) -> float:
    """Convolution and matrix-product FLOPs of one window through the scoring module, as
    ``torch.utils.flop_counter`` counts them (elementwise work is not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stream_ae.models import build_model
    from stream_ae.scoring import WindowScores

    model = build_model(artifact.model)
    model.load_state_dict(artifact.state_dict)
    module = WindowScores.of(model.eval(), artifact).eval()
    rows = torch.randn(n + artifact.model.window, CHANNELS)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(rows, torch.arange(n))
    return counter.get_total_flops() / n


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call, device, repeats: int = REPEATS) -> list[float]:
    call()  # warm-up: kernels chosen, graph run once
    _synchronize(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def device_ceilings(device) -> dict:
    """What the device itself does, measured now: a 1 GiB device-to-device copy (bytes read
    plus written) and 8192^3 matrix products in fp32 (TF32 off) and bf16. CUDA only."""
    import torch

    if device.type != "cuda":
        return {}
    source = torch.empty(2**28, device=device)
    target = torch.empty_like(source)
    copy = statistics.median(_timed(lambda: target.copy_(source), device, 10))
    source = target = None  # free the 2 GiB before the products
    out = {"copy_gb_per_s": round(2 * 4 * 2**28 / copy / 1e9, 1)}
    n = 8192
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            x = torch.randn(n, n, device=device, dtype=dtype)
            y = torch.randn(n, n, device=device, dtype=dtype)
            s = statistics.median(_timed(lambda: x @ y, device, 5))
            out[f"matmul_{name}_tflop_per_s"] = round(2 * n**3 / s / 1e12, 1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def measure(artifact, device, precision: str, batch: int, windows: int) -> dict:
    """One configuration: score_rows end to end, and the graph alone on device-resident rows."""
    import torch

    from stream_ae.scoring import Scorer

    scorer = Scorer(artifact, device=str(device), batch_size=batch, precision=precision)
    length = artifact.window.length
    rows = np.random.default_rng(0).normal(size=(windows + length - 1, CHANNELS)).astype(np.float32)
    starts = np.arange(windows, dtype=np.int64)
    seconds = _timed(lambda: scorer.score_rows(rows, starts), device)
    on_device = scorer._to_device(rows[:batch + length - 1])
    idx = scorer._to_device(starts[:batch])
    with torch.inference_mode():
        graph = _timed(lambda: scorer._graph(on_device, idx), device, 20)
    return {"precision": precision, "batch": scorer.batch_size, "windows": windows,
            "traced_graph": isinstance(scorer._graph, torch.jit.ScriptModule),
            "windows_per_s": round(windows / statistics.median(seconds), 1),
            "best_windows_per_s": round(windows / min(seconds), 1),
            "graph_only_windows_per_s": round(batch / statistics.median(graph), 1)}


def run_scoring_bench(device: str = "auto", json_path=None, precisions=None) -> dict:
    """Measure each precision the device runs natively at each forward-pass size; print the JSON."""
    import torch

    from stream_ae.scoring import cpu_has_native_bf16, resolve_device

    dev = resolve_device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    if precisions is None:
        precisions = ("fp32", "bf16", "fp16") if kind == "cuda" else (
            ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",))
    artifact = preset_artifact()
    flops = flops_per_window(artifact)
    runs = [measure(artifact, dev, p, b, WINDOWS[kind]) for p in precisions for b in BATCHES[kind]]
    for run in runs:
        run["model_tflop_per_s"] = round(run["windows_per_s"] * flops / 1e12, 3)
    best = max(runs, key=lambda r: r["windows_per_s"])
    fp32 = max((r for r in runs if r["precision"] == "fp32"), key=lambda r: r["windows_per_s"])
    result = {
        "bench": "scoring", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if kind == "cuda" else "cpu",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "model": {"source": "presets.PRESETS['conv'], 8 channels, detrended as SKAB's", **artifact.model.to_dict()},
        "flops_per_window": round(flops), "device_ceilings": device_ceilings(dev), "runs": runs,
        "best": {k: best[k] for k in ("precision", "batch", "windows_per_s")},
        "fp32_best": {k: fp32[k] for k in ("batch", "windows_per_s")},
    }
    if kind == "cuda":
        result["target_windows_per_s"] = TARGET_CUDA_WINDOWS_PER_S
        result["meets_target_fp32"] = fp32["windows_per_s"] >= TARGET_CUDA_WINDOWS_PER_S
    return emit(result, json_path)
