import numpy as np
import pytest
import torch

from stream_ae.artifact import Artifact, make_version, utc_now, weights_bytes
from stream_ae.data.layout import Layout
from stream_ae.data.windows import WindowSpec
from stream_ae.errors import ConfigError, DataError
from stream_ae.models import ModelConfig, build_model
from stream_ae.scaling import ChannelScaler
from stream_ae.scoring import Scorer

T, C = 12, 4


@pytest.fixture(scope="module", params=["conv", "lstm"])
def artifact(request) -> Artifact:
    torch.manual_seed(0)
    config = ModelConfig(kind=request.param, n_channels=C, window=T, hidden=8, latent=4)
    state = build_model(config).state_dict()
    created = utc_now()
    rows = np.random.default_rng(0).normal(10, 3, size=(500, C)).astype(np.float32)
    return Artifact(
        version=make_version(config, created, weights_bytes(state)), model=config,
        window=WindowSpec(length=T), layout=Layout(), channels=tuple("abcd"),
        scaler=ChannelScaler().fit(rows), threshold={"spec": {}, "state": {}}, training={},
        state_dict=state, created_at=created,
    )


def _rows(n=300, seed=1):
    return np.random.default_rng(seed).normal(10, 3, size=(n, C)).astype(np.float32)


def test_score_rows_equals_score_windows_on_the_same_windows(artifact):
    scorer = Scorer(artifact, device="cpu", batch_size=64)
    rows = _rows()
    starts = np.array([0, 5, 6, 100, 288], dtype=np.int64)
    by_rows = scorer.score_rows(rows, starts)
    windows = np.stack([rows[s:s + T] for s in starts])
    by_windows = scorer.score_windows(windows)
    np.testing.assert_array_equal(by_rows.score, by_windows.score)
    np.testing.assert_array_equal(by_rows.channel_error, by_windows.channel_error)
    assert by_rows.score.dtype == np.float32 and by_rows.channel_error.shape == (5, C)


def test_scores_match_scaling_then_model(artifact):
    scorer = Scorer(artifact, device="cpu")
    rows = _rows()
    starts = np.arange(0, 280, 7, dtype=np.int64)
    got = scorer.score_rows(rows, starts)
    x = torch.from_numpy(artifact.scaler.transform(np.stack([rows[s:s + T] for s in starts])))
    with torch.inference_mode():
        want = ((scorer.model(x) - x) ** 2).mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(got.score, want, rtol=1e-5)
    np.testing.assert_allclose(got.channel_error.mean(axis=1), got.score, rtol=1e-5)


def test_batch_size_does_not_change_scores(artifact):
    rows = _rows()
    starts = np.arange(len(rows) - T + 1, dtype=np.int64)
    big = Scorer(artifact, device="cpu", batch_size=4096).score_rows(rows, starts)
    for bs in (1, 7, 100):
        small = Scorer(artifact, device="cpu", batch_size=bs).score_rows(rows, starts)
        np.testing.assert_allclose(small.score, big.score, rtol=1e-6, atol=1e-7)
    assert np.isfinite(big.score).all() and np.isfinite(big.channel_error).all()
    order = np.random.default_rng(0).permutation(len(starts))  # chunks over unsorted starts overlap
    shuffled = Scorer(artifact, device="cpu", batch_size=40).score_rows(rows, starts[order])
    np.testing.assert_allclose(shuffled.score, big.score[order], rtol=1e-6, atol=1e-7)


def test_an_anomalous_window_is_not_scored_like_the_others(artifact):
    rows = _rows()
    rows[150:156, 2] += 60.0  # a spike far outside the training range
    scorer = Scorer(artifact, device="cpu")
    res = scorer.score_rows(rows, np.arange(len(rows) - T + 1, dtype=np.int64))
    assert res.score[145] > 10 * np.median(res.score)
    assert res.channel_error[145].argmax() == 2  # the per-channel error points at the culprit


def test_attributes_and_input_checks(artifact):
    scorer = Scorer(artifact, device="cpu")
    assert scorer.version == artifact.version and scorer.channels == ("a", "b", "c", "d")
    assert scorer.window == WindowSpec(length=T)
    assert not scorer.model.training
    assert len(scorer.score_rows(_rows(), np.zeros(0, np.int64))) == 0
    with pytest.raises(DataError, match=r"shape \(N, 4\)"):
        scorer.score_rows(np.zeros((20, 3), np.float32), np.array([0]))
    with pytest.raises(DataError, match="window starts"):
        scorer.score_rows(_rows(20), np.array([9]))
    with pytest.raises(DataError, match="windows must have shape"):
        scorer.score_windows(np.zeros((2, T + 1, C), np.float32))
    with pytest.raises(ConfigError):
        Scorer(artifact, device="tpu")
    with pytest.raises(ConfigError, match="CUDA only"):
        Scorer(artifact, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="precision must be one of"):
        Scorer(artifact, device="cpu", precision="int8")


def test_bf16_on_a_cpu_without_native_bf16_is_refused(artifact, monkeypatch):
    from stream_ae import scoring

    monkeypatch.setattr(scoring, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="native bf16"):
        Scorer(artifact, device="cpu", precision="bf16")


def test_bf16_scores_follow_fp32_and_the_graph_holds_the_casts(artifact):
    from stream_ae.scoring import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX)")
    rows = _rows()
    starts = np.arange(len(rows) - T + 1, dtype=np.int64)
    fp32 = Scorer(artifact, device="cpu").score_rows(rows, starts)
    bf16_scorer = Scorer(artifact, device="cpu", precision="bf16")
    traced = isinstance(bf16_scorer._graph, torch.jit.ScriptModule)
    # oneDNN's bf16 LSTM fails on the frozen graph's shapes: the build-time check catches it
    # and lstm scores with the eager model under autocast
    assert traced == (artifact.model.kind == "conv") and (bf16_scorer._autocast is None) == traced
    bf16 = bf16_scorer.score_rows(rows, starts)
    assert bf16.score.dtype == np.float32
    assert not np.array_equal(bf16.score, fp32.score)  # it did run in bf16
    np.testing.assert_allclose(bf16.score, fp32.score, rtol=0.05)
    ranks = lambda a: np.argsort(np.argsort(a))  # noqa: E731
    assert np.corrcoef(ranks(bf16.score), ranks(fp32.score))[0, 1] > 0.99


@pytest.mark.parametrize("kind", ["conv", "lstm"])
@pytest.mark.parametrize("variant", ["undercomplete", "denoising", "sparse", "contractive", "variational"])
def test_the_traced_graph_scores_exactly_as_the_eager_model(kind, variant):
    """The Scorer's frozen graph (traced on 2 windows of T+1 rows) generalises to any batch
    and row count, and gives the eager module's numbers: bitwise for conv, to 1 ulp for lstm
    (whose frozen LSTM kernel may sum in another order)."""
    from stream_ae.scoring import WindowScores, score_graph

    torch.manual_seed(3)
    config = ModelConfig(kind=kind, variant=variant, n_channels=C, window=T, hidden=8, latent=4)
    eager = WindowScores(build_model(config).eval(), T).eval()
    graph = score_graph(eager, C)
    assert isinstance(graph, torch.jit.ScriptModule)  # traced, not the fallback
    for n, b in ((T, 1), (50, 7), (400, 389)):
        rows = torch.randn(n, C)
        starts = torch.randint(0, n - T + 1, (b,))
        with torch.inference_mode():
            want, got = eager(rows, starts), graph(rows, starts)
        tol = 0 if kind == "conv" else 1e-6
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * 1e-3)


def test_a_model_that_cannot_be_traced_is_scored_eagerly(caplog):
    from stream_ae.scoring import WindowScores, score_graph

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            if torch.jit.is_tracing():  # stands for any op a torch release cannot trace
                raise RuntimeError("no tracing here")
            return x

    module = WindowScores(Untraceable(), T)
    assert score_graph(module, C) is module
    assert "eager" in caplog.text


def test_threads_scoring_at_once_get_what_one_thread_gets(artifact):
    """The runner scores batch.scoring_threads micro-batches at once on one Scorer."""
    from concurrent.futures import ThreadPoolExecutor

    scorer = Scorer(artifact, device="cpu", batch_size=64)
    jobs = [(_rows(200 + 13 * i, seed=i), None) for i in range(24)]
    jobs = [(rows, np.arange(len(rows) - T + 1, dtype=np.int64)[i % 5::2]) for i, (rows, _) in enumerate(jobs)]
    alone = [scorer.score_rows(rows, starts) for rows, starts in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: scorer.score_rows(*job), jobs * 3))
    for i, got in enumerate(together):
        np.testing.assert_array_equal(got.score, alone[i % len(jobs)].score)
        np.testing.assert_array_equal(got.channel_error, alone[i % len(jobs)].channel_error)


def _other_weights(artifact: Artifact, seed: int = 7) -> Artifact:
    import dataclasses

    torch.manual_seed(seed)
    state = build_model(artifact.model).state_dict()
    return dataclasses.replace(artifact, state_dict=state, version=artifact.version + "-other")


def test_a_structure_traced_before_is_loaded_again_with_the_new_model_s_weights(artifact, monkeypatch):
    """Two models of one architecture (a hot reload): one trace between them, and each graph
    scores with its own weights, as its eager module does."""
    from stream_ae import scoring

    other = _other_weights(artifact)
    scoring._TRACES.clear()
    graphs = [Scorer(artifact, device="cpu"), Scorer(other, device="cpu")]
    assert len(scoring._TRACES) == 1 and all(isinstance(s._graph, torch.jit.ScriptModule) for s in graphs)
    monkeypatch.setattr(scoring, "score_graph", lambda module, *args, **kwargs: module)
    eager = [Scorer(artifact, device="cpu"), Scorer(other, device="cpu")]
    rows, starts = _rows(), np.arange(0, 250, 3)
    got = [s.score_rows(rows, starts).score for s in graphs]
    want = [s.score_rows(rows, starts).score for s in eager]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)
    assert not np.allclose(got[0], got[1])  # the weights differ, and so do the scores


def test_building_scorers_again_and_again_keeps_the_heap_flat(artifact):
    """A hot reload builds a Scorer: torch.jit.trace never frees what it registers, so each
    structure is traced once. Measured against tracing every time, in the same process."""
    import gc

    from stream_ae import scoring
    from stream_ae.allocator import heap_in_use_bytes

    if heap_in_use_bytes() is None:
        pytest.skip("glibc 2.33+ only (mallinfo2)")

    def growth(retrace: bool, builds: int = 12) -> int:
        Scorer(artifact, device="cpu")
        gc.collect()
        before = heap_in_use_bytes()
        for _ in range(builds):
            if retrace:
                scoring._TRACES.clear()
            Scorer(artifact, device="cpu")
        gc.collect()
        return heap_in_use_bytes() - before

    reused, retraced = growth(retrace=False), growth(retrace=True)
    assert retraced > 12 * 20_000, retraced  # what every reload used to keep
    assert reused < retraced / 5, (reused, retraced)
