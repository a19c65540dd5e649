"""The CUDA paths against the CPU: scoring (every kind and variant, every precision), the traced
graph, training with mixed precision, the stream detector and the backfill.

They run where a CUDA GPU is visible and are skipped, saying so, everywhere else (CI has none).
They were run on the lent GPU machine; the figures are in docs/performance.md.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stream_ae.artifact import Artifact, load_artifact, make_version, save_artifact, utc_now, weights_bytes
from stream_ae.data import Layout, WindowSpec, generate_plant, write_history
from stream_ae.models import ModelConfig, build_model
from stream_ae.scaling import ChannelScaler
from stream_ae.scoring import Scorer
from stream_ae.variant_options import VARIANTS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

T, C = 24, 4
CHANNELS = ("flow", "temp", "vib", "current")


def _artifact(kind: str, variant: str = "undercomplete", detrend=(1,), score_steps=0) -> Artifact:
    torch.manual_seed(0)
    config = ModelConfig(kind=kind, variant=variant, n_channels=C, window=T, hidden=16, latent=8,
                         detrend=detrend, score_steps=score_steps)
    state = build_model(config).state_dict()
    created = utc_now()
    return Artifact(
        version=make_version(config, created, weights_bytes(state)), model=config,
        window=WindowSpec(length=T), layout=Layout(channels=CHANNELS), channels=CHANNELS,
        scaler=ChannelScaler().fit(_rows(seed=9)), threshold={"spec": {}, "state": {}}, training={},
        state_dict=state, created_at=created)


def _rows(n=3000, seed=1):
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return (10 + 3 * np.sin(2 * np.pi * t / 50 + np.arange(C)) + rng.normal(0, 0.5, (n, C))).astype(np.float32)


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64)))


@pytest.mark.parametrize("kind", ["conv", "lstm"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_fp32_scores_equal_the_cpus(kind, variant):
    art = _artifact(kind, variant, score_steps=8 if kind == "conv" else 0)
    rows = _rows()
    starts = np.arange(len(rows) - T + 1, dtype=np.int64)
    cpu = Scorer(art, device="cpu").score_rows(rows, starts)
    gpu = Scorer(art, device="cuda").score_rows(rows, starts)
    assert _relative(gpu.score, cpu.score) < 1e-5
    assert _relative(gpu.channel_error, cpu.channel_error) < 1e-5


@pytest.mark.parametrize("kind", ["conv", "lstm"])
def test_cuda_scores_as_one_traced_graph(kind):
    scorer = Scorer(_artifact(kind), device="cuda")
    assert isinstance(scorer._graph, torch.jit.ScriptModule), "fell back to the eager model"
    assert scorer._graph(torch.zeros(T + 3, C, device="cuda"),
                         torch.tensor([0, 2], device="cuda"))[0].device.type == "cuda"


@pytest.mark.parametrize("kind", ["conv", "lstm"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_half_precision_stays_near_fp32(kind, precision):
    art = _artifact(kind)
    rows = _rows()
    starts = np.arange(len(rows) - T + 1, dtype=np.int64)
    full = Scorer(art, device="cuda").score_rows(rows, starts)
    half = Scorer(art, device="cuda", precision=precision).score_rows(rows, starts)
    assert half.score.dtype == np.float32
    assert _relative(half.score, full.score) < 1e-2


def test_cuda_chunks_and_unsorted_starts_give_the_same_scores():
    art = _artifact("conv", score_steps=8)
    rows = _rows()
    starts = np.arange(len(rows) - T + 1, dtype=np.int64)
    whole = Scorer(art, device="cuda", batch_size=8192).score_rows(rows, starts)
    order = np.random.default_rng(0).permutation(len(starts))
    chunked = Scorer(art, device="cuda", batch_size=64).score_rows(rows, starts[order])
    np.testing.assert_allclose(chunked.score, whole.score[order], rtol=1e-5, atol=1e-7)


def test_training_on_cuda_with_mixed_precision_gives_an_artifact_the_cpu_scores(tmp_path):
    from stream_ae.thresholds.base import ThresholdSpec
    from stream_ae.training import TrainConfig, train

    df, _ = generate_plant(n_entities=2, n_channels=3, n_rows=1500, anomalies=False, seed=3)
    history = write_history(df, tmp_path / "plant")
    config = ModelConfig(kind="conv", hidden=8, latent=4)
    cfg = TrainConfig(epochs=4, batch_size=64, patience=5, max_windows=2000, device="cuda", amp=True,
                      progress=False)
    art = train(str(history), Layout(), WindowSpec(length=16, hop=2), config, cfg,
                ThresholdSpec(kind="evt", warmup=50))
    losses = art.training["metrics"]
    assert np.isfinite(losses["val_loss"])
    assert all(t.device.type == "cpu" for t in art.state_dict.values())
    loaded = load_artifact(save_artifact(art, tmp_path / "models"))
    w = np.random.default_rng(0).normal(size=(64, 16, 3)).astype(np.float32)
    cpu = Scorer(loaded, "cpu").score_windows(w).score
    assert np.isfinite(cpu).all()
    assert _relative(Scorer(loaded, "cuda").score_windows(w).score, cpu) < 1e-5


def test_cuda_training_lowers_the_loss_for_every_variant():
    from stream_ae.training import TrainConfig, fit_autoencoder

    rows = _rows(n=2000)
    scaled = ChannelScaler().fit(rows).transform(rows)
    windows = np.lib.stride_tricks.sliding_window_view(scaled, T, axis=0).transpose(0, 2, 1)
    train_w, val_w = np.ascontiguousarray(windows[:1500]), np.ascontiguousarray(windows[1500:])
    for kind in ("conv", "lstm"):
        for variant in VARIANTS:
            torch.manual_seed(0)
            model = build_model(ModelConfig(kind=kind, variant=variant, n_channels=C, window=T, hidden=16, latent=8))
            hist = fit_autoencoder(model, train_w, val_w, TrainConfig(epochs=6, batch_size=64, patience=10,
                                                                      device="cuda", progress=False))
            assert np.isfinite(hist["val_loss"]).all(), (kind, variant)
            assert hist["best_val_loss"] < hist["val_loss"][0], (kind, variant, hist["val_loss"])


def test_the_stream_detector_on_cuda_raises_the_cpus_alerts():
    from test_stream_detector import make_artifact, make_detector, plant, run

    art = make_artifact()
    entity, ts, values = plant()
    cpu_events, cpu_windows, _ = run(make_detector(Scorer(art, device="cpu")), entity, ts, values, chunk=37)
    gpu_events, gpu_windows, _ = run(make_detector(Scorer(art, device="cuda")), entity, ts, values, chunk=37)
    assert cpu_events and gpu_windows == cpu_windows
    assert [(e.event_id, e.state) for e in gpu_events] == [(e.event_id, e.state) for e in cpu_events]
    np.testing.assert_allclose([e.score for e in gpu_events], [e.score for e in cpu_events], rtol=1e-5)


def test_a_cuda_backfill_writes_the_cpus_scores(tmp_path):
    from stream_ae.backfill import run_backfill
    from tests.test_backfill import read_scores, write_archive
    from stream_ae.thresholds import ThresholdSpec
    from stream_ae.training import TrainConfig, train

    archive = write_archive(tmp_path / "archive")
    art = train(str(archive), Layout(), WindowSpec(length=16, hop=1), ModelConfig(window=16),
                TrainConfig(epochs=2, max_windows=2_000, progress=False, device="cpu"),
                ThresholdSpec(kind="quantile", quantile=0.99, factor=1.5, warmup=50), end="2026-01-03")
    path = save_artifact(art, tmp_path / "models")
    frames = {}
    for device in ("cpu", "cuda"):
        report = run_backfill(str(archive), str(path), str(tmp_path / device), device=device, progress=False,
                              batch_rows=500)
        assert report.windows_scored > 0
        frames[device] = read_scores(tmp_path / device)
    cpu, gpu = frames["cpu"], frames["cuda"]
    assert len(gpu) == len(cpu) and (gpu["window_end"] == cpu["window_end"]).all()
    assert _relative(gpu["score"].to_numpy(), cpu["score"].to_numpy()) < 1e-5
    assert (gpu["anomaly"] == cpu["anomaly"]).mean() > 0.999


def test_a_cuda_scorer_of_a_reloaded_model_keeps_the_graph_per_structure():
    first = Scorer(_artifact("conv"), device="cuda")
    second = Scorer(dataclasses.replace(_artifact("conv"), version="v2"), device="cuda")
    rows = _rows()
    starts = np.arange(0, len(rows) - T + 1, 5, dtype=np.int64)
    np.testing.assert_array_equal(first.score_rows(rows, starts).score, second.score_rows(rows, starts).score)


def test_warm_up_runs_every_forward_pass_shape_of_a_micro_batch(monkeypatch):
    scorer = Scorer(_artifact("conv"), device="cuda", batch_size=8192)
    sizes = []
    original = scorer.score_rows
    monkeypatch.setattr(scorer, "score_rows", lambda rows, starts: sizes.append(len(starts)) or original(rows, starts))
    assert scorer.warm_up(100) is scorer
    assert sizes == [32, 32, 64, 64, 96, 96, 128, 128]
