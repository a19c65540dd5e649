"""The streaming detector without Kafka: chunking invariance, one scoring path, replay, entity cap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream_ae.artifact import Artifact, make_version, utc_now, weights_bytes
from stream_ae.data.layout import Layout
from stream_ae.data.windows import SeriesWindower, WindowSpec
from stream_ae.models import ModelConfig, build_model
from stream_ae.scaling import ChannelScaler
from stream_ae.scoring import Scorer

T, C = 16, 3
CHANNELS = ("temp", "pressure", "flow")
STEP_NS = 1_000_000_000
T0_NS = 1_700_000_000 * 1_000_000_000


def plant(n_rows: int = 500, entities=("pump-a", "pump-b", "pump-c"), anomaly=("pump-b", 250, 300),
          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings interleaved by time: entity (N,), ts (N,) ns, values (N, C); a level shift in one entity."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_rows)
    ent, ts, vals = [], [], []
    for k, name in enumerate(entities):
        x = np.stack([np.sin(2 * np.pi * t / 50 + k + c) for c in range(C)], axis=1)  # (n, C)
        x = 10 + 3 * x + rng.normal(0, 0.2, size=x.shape)
        if anomaly and name == anomaly[0]:
            x[anomaly[1]:anomaly[2], 1] += 25.0
        ent.append(np.full(n_rows, name, dtype=object))
        ts.append(T0_NS + t * STEP_NS)
        vals.append(x.astype(np.float32))
    order = np.argsort(np.concatenate(ts), kind="stable")  # time-interleaved, like a topic
    return np.concatenate(ent)[order], np.concatenate(ts)[order], np.concatenate(vals)[order]


def make_artifact(seed: int = 0, kind: str = "quantile") -> Artifact:
    """A small conv autoencoder trained briefly on normal data, threshold calibrated on it."""
    from stream_ae.thresholds import ThresholdSpec, build_threshold
    from stream_ae.thresholds.base import threshold_to_dict

    torch.manual_seed(seed)
    _, _, rows = plant(n_rows=600, anomaly=None, seed=seed + 100)
    config = ModelConfig(kind="conv", n_channels=C, window=T, hidden=8, latent=4, kernel=3)
    model = build_model(config)
    scaler = ChannelScaler().fit(rows)
    x = torch.from_numpy(np.lib.stride_tricks.sliding_window_view(scaler.transform(rows), T, axis=0)
                         .transpose(0, 2, 1).copy())  # (B, T, C)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss, _ = model.training_loss(x[torch.randint(len(x), (128,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    created = utc_now()
    art = Artifact(
        version=make_version(config, created, weights_bytes(state)), model=config,
        window=WindowSpec(length=T), layout=Layout(), channels=CHANNELS, scaler=scaler,
        threshold={}, training={}, state_dict=state, created_at=created,
    )
    spec = ThresholdSpec(kind=kind, quantile=0.99, factor=1.5, warmup=50)
    threshold = build_threshold(spec)
    threshold.fit(Scorer(art, device="cpu").score_windows(x.numpy()).score)
    art.threshold = threshold_to_dict(threshold)
    return art


def alert_policy():
    from stream_ae.alerts import AlertPolicy

    return AlertPolicy(k=2, n=4, update_interval_s=10.0, quiet_s=20.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def artifact(one_torch_thread) -> Artifact:
    return make_artifact()


@pytest.fixture(scope="module")
def scorer(artifact) -> Scorer:
    return Scorer(artifact, device="cpu")


def make_detector(scorer, max_entities: int = 1000):
    from stream_ae.stream.detector import Detector
    from stream_ae.thresholds import ThresholdSpec

    art = scorer.artifact
    return Detector(scorer, ThresholdSpec.from_dict(art.threshold["spec"]), art.threshold["state"],
                    alert_policy(), art.window, max_entities=max_entities)


def run(detector, entity, ts, values, chunk: int, partition=None, offset0: int = 0):
    from stream_ae.stream.detector_io import ReadingBatch

    events, windows, skipped = [], 0, 0
    n = len(ts)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        part = None if partition is None else np.full(hi - lo, partition)
        off = None if partition is None else np.arange(offset0 + lo, offset0 + hi)
        out = detector.process(ReadingBatch.from_arrays(entity[lo:hi], ts[lo:hi], values[lo:hi], part, off))
        events += out.events
        windows += out.windows_scored
        skipped += out.skipped
    return events, windows, skipped


def key(events):
    return [(e.event_id, e.entity, e.state, float(e.score)) for e in events]


def test_anomaly_opens_and_resolves_an_alert_on_the_right_entity(scorer):
    entity, ts, values = plant()
    events, windows, _ = run(make_detector(scorer), entity, ts, values, chunk=64)
    assert windows == 3 * (500 - T + 1)
    assert events, "the level shift raised no alert"
    assert {e.entity for e in events} == {"pump-b"}
    states = [e.state for e in events]
    assert states[0] == "open" and "resolved" in states
    assert all(e.model_version == scorer.version for e in events)
    assert len({e.event_id for e in events}) == len(events)


@pytest.mark.parametrize("chunk", [1, 7, 250])
def test_events_do_not_depend_on_micro_batch_size(scorer, chunk):
    entity, ts, values = plant()
    whole, n_whole, _ = run(make_detector(scorer), entity, ts, values, chunk=len(ts))
    parts, n_parts, _ = run(make_detector(scorer), entity, ts, values, chunk=chunk)
    assert n_parts == n_whole
    assert key(parts) == key(whole) and whole


def test_stream_scores_equal_the_backfill_path(scorer):
    entity, ts, values = plant()
    sel = entity == "pump-b"
    windower = SeriesWindower(scorer.window, C)
    batch = windower.push(ts[sel], values[sel])
    backfill = scorer.score_windows(np.ascontiguousarray(batch.windows))
    det = make_detector(scorer)
    captured = []
    original = det.scorer.score_rows

    def spy(rows, starts):
        res = original(rows, starts)
        captured.append((rows.copy(), starts.copy(), res.score.copy()))
        return res

    det.scorer.score_rows = spy
    try:
        run(det, entity, ts, values, chunk=37)
    finally:
        del det.scorer.score_rows
    stream = {}
    for rows, starts, score in captured:
        for s, sc in zip(starts, score):
            stream.setdefault(rows[s:s + T].tobytes(), []).append(sc)
    found = [stream[w.tobytes()] for w in np.ascontiguousarray(batch.windows)]
    for want, got in zip(backfill.score, found):
        assert want in got  # the same window scored from the stream gives the same number


def test_replay_after_restore_skips_absorbed_readings_and_repeats_no_event(scorer):
    entity, ts, values = plant()
    n = len(ts)
    ref_events, ref_windows, _ = run(make_detector(scorer), entity, ts, values, chunk=50, partition=0)
    half = n // 2 + 13
    first = make_detector(scorer)
    before, w1, _ = run(first, entity[:half], ts[:half], values[:half], chunk=50, partition=0)
    from stream_ae.stream.checkpoint import decode_state

    states = first.table.take_dirty()  # the state records a checkpoint writes
    after_crash, _, _ = run(first, entity[half:half + 200], ts[half:half + 200], values[half:half + 200],
                            chunk=50, partition=0, offset0=half)  # emitted, then the process died

    restarted = make_detector(scorer)
    for e, (partition, value) in states.items():
        assert partition == 0
        restarted.restore(e, decode_state(value))
    restarted.suppress(e.event_id for e in after_crash)
    replayed, w2, skipped = run(restarted, entity[half - 100:], ts[half - 100:], values[half - 100:],
                                chunk=33, partition=0, offset0=half - 100)  # the commit was older
    assert skipped == 100
    assert w1 + w2 == ref_windows
    assert key(before + after_crash + replayed) == key(ref_events)


def test_entity_cap_evicts_without_changing_events(scorer):
    entity, ts, values = plant()
    ref, _, _ = run(make_detector(scorer), entity, ts, values, chunk=20)
    det = make_detector(scorer, max_entities=2)
    capped, _, _ = run(det, entity, ts, values, chunk=20)
    assert det.table.evictions > 0 and len(det.table) <= 2
    assert key(capped) == key(ref)


def test_duplicates_and_out_of_order_readings_are_rejected_with_reasons(scorer):
    from stream_ae.stream.detector_io import ReadingBatch

    det = make_detector(scorer)
    v = np.ones((4, C), np.float32)
    ts = np.array([T0_NS, T0_NS + STEP_NS, T0_NS + STEP_NS, T0_NS], np.int64)
    out = det.process(ReadingBatch.from_arrays(["x"] * 4, ts, v))
    assert out.rejected == [(2, "duplicate"), (3, "out_of_order")]


def test_hot_swap_names_the_new_model_version(scorer, artifact):
    import dataclasses

    entity, ts, values = plant()
    det = make_detector(scorer)
    run(det, entity[:600], ts[:600], values[:600], chunk=100)
    new = Scorer(dataclasses.replace(artifact, version="conv-undercomplete-v2"), device="cpu")
    det.swap_scorer(new)
    events, _, _ = run(det, entity[600:], ts[600:], values[600:], chunk=100)
    assert events and all(e.model_version == "conv-undercomplete-v2" for e in events)


def test_hot_swap_restarts_thresholds_from_the_new_models_calibration(scorer, artifact):
    """A threshold learned on one model's scores means nothing for another's: after a swap every
    entity's threshold starts from the new artifact's calibration (here 1000x the old one)."""
    import dataclasses
    import math

    from stream_ae.thresholds import build_threshold, threshold_from_dict
    from stream_ae.thresholds.base import ThresholdSpec, threshold_to_dict

    entity, ts, values = plant(anomaly=None)
    det = make_detector(scorer)
    run(det, entity[:600], ts[:600], values[:600], chunk=100)
    old_value = det.table.get("pump-a").threshold.value
    spec = ThresholdSpec.from_dict(artifact.threshold["spec"])
    loud = build_threshold(spec)
    loud.fit(1000.0 * np.asarray(Scorer(artifact, device="cpu").score_windows(
        np.lib.stride_tricks.sliding_window_view(values[:300], T, axis=0).transpose(0, 2, 1)).score))
    v2 = dataclasses.replace(artifact, version="conv-undercomplete-v2", threshold=threshold_to_dict(loud))
    det.swap_scorer(Scorer(v2, device="cpu"))
    events, _, _ = run(det, entity[600:], ts[600:], values[600:], chunk=100)
    state = det.table.get("pump-a")
    assert state.model_version == "conv-undercomplete-v2"
    assert state.threshold.value > 100 * old_value      # started from v2's calibration, not v1's state
    assert not events                                   # v1's scores under v2's threshold: no alert
    # the version travels with the snapshot, so a restart keeps the threshold it learned
    snap = state.state_dict()
    restored = det._new_state("pump-a")
    restored.load_state_dict(snap)
    assert restored.model_version == "conv-undercomplete-v2"
    assert math.isclose(restored.threshold.value, state.threshold.value)
    assert threshold_from_dict(threshold_to_dict(restored.threshold)).value == restored.threshold.value


def test_months_of_hot_reloads_keep_a_few_calibrations_and_each_swap_seeds_from_its_own(scorer, artifact):
    """Each reload's version brings its calibration; only the latest CALIBRATIONS_KEPT stay at
    hand, and a version that comes back (a rollback) is seeded from its artifact again."""
    import dataclasses

    from stream_ae.stream.detector import CALIBRATIONS_KEPT

    entity, ts, values = plant(anomaly=None)
    det = make_detector(scorer)
    versions = [scorer] + [Scorer(dataclasses.replace(artifact, version=f"v{i}"), device="cpu")
                           for i in range(CALIBRATIONS_KEPT + 2)]
    step = 100
    for i, s in enumerate(versions + [scorer]):  # the last: a rollback to the first version
        det.swap_scorer(s)
        lo = 100 + i * step
        run(det, entity[lo:lo + step], ts[lo:lo + step], values[lo:lo + step], chunk=step)
        assert det.table.get("pump-a").model_version == s.version
        assert len(det._calibrations) <= CALIBRATIONS_KEPT
    assert list(det._calibrations)[-1] == scorer.version


def test_runner_takes_its_checkpoint_interval_from_the_settings(artifact):
    """No broker needed: the runner's Kafka clients are created in run(), not in __init__."""
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.settings import load_settings

    settings = load_settings(env={}, overrides=["kafka.checkpoint_interval_s=2.5"])
    assert StreamRunner(settings, artifact).checkpoint_interval_s == 2.5
    assert StreamRunner(settings, artifact, checkpoint_interval_s=1.0).checkpoint_interval_s == 1.0


def test_readings_are_grouped_by_entity_in_order_of_first_appearance():
    from stream_ae.stream.detector_io import group_by_entity

    ents = np.array(["b", "a", "b", "c", "a", "b"], dtype=object)
    names, order, counts = group_by_entity(ents)
    assert names == ["b", "a", "c"] and counts.tolist() == [3, 2, 1]
    assert order.tolist() == [0, 2, 5, 1, 4, 3]
    names, order, counts = group_by_entity(np.array(["x"], dtype=object))
    assert names == ["x"] and order.tolist() == [0] and counts.tolist() == [1]


def test_entities_windowed_together_give_what_one_by_one_gives(monkeypatch):
    """The fleet path (clean chunks of many entities windowed at once, calm scores only
    counted) against every entity windowed and thresholded alone: the same events, caused
    by the same readings, the same rejections and skips, the same scores and flags, and the
    same state, batch after batch; with gaps, missing values, duplicates, an anomaly that
    opens and resolves alerts, several partitions, and a replay after a restore."""
    import json

    from stream_ae.stream.detector import Detector
    from stream_ae.stream.detector_io import ReadingBatch
    from stream_ae.thresholds import ThresholdSpec

    art = make_artifact(seed=3, kind="evt")
    scorer = Scorer(art, device="cpu")
    names = [f"unit-{i:02d}" for i in range(40)]
    ent, ts, vals = plant(n_rows=220, entities=names, anomaly=("unit-07", 120, 160), seed=5)
    vals = vals.copy()
    rng = np.random.default_rng(11)
    for i in rng.choice(len(ts), 12, replace=False):
        vals[i, rng.integers(C)] = np.nan  # short missing runs: filled by the general rule
    ts = ts.copy()
    ts[(ent == "unit-03") & (ts > T0_NS + 100 * STEP_NS)] += 30 * STEP_NS  # a gap
    dup = np.flatnonzero(ent == "unit-05")[50]
    ent, ts, vals = np.insert(ent, dup + 1, ent[dup]), np.insert(ts, dup + 1, ts[dup]), \
        np.insert(vals, dup + 1, vals[dup], axis=0)  # a duplicate reading
    part = np.array([int(e[-2:]) % 3 for e in ent], np.int64)
    off = np.zeros(len(ts), np.int64)
    for p in range(3):
        off[part == p] = np.arange((part == p).sum())

    def detector(vectorised):
        return Detector(scorer, ThresholdSpec.from_dict(art.threshold["spec"]), art.threshold["state"],
                        alert_policy(), art.window, vectorised=vectorised)

    def step(det, lo, hi):
        out = det.process(ReadingBatch.from_arrays(ent[lo:hi], ts[lo:hi], vals[lo:hi], part[lo:hi], off[lo:hi]))
        windows = sorted(zip(out.end_ts.tolist(), out.flags.tolist(), out.scores.tolist()))
        return ([e.to_dict() for e in out.events], out.event_index, sorted(out.rejected), out.skipped,
                out.windows_scored, windows)

    def states(det):
        return json.dumps({e: det.table.get(e).state_dict() for e in sorted(det.table.live())})

    import stream_ae.stream.detector as detector_module
    from stream_ae.thresholds.evt import EvtThreshold

    taken, calm = [], []
    many = detector_module.push_clean_many
    monkeypatch.setattr(detector_module, "push_clean_many",
                        lambda *a: taken.append(many(*a)) or taken[-1])
    absorb = EvtThreshold.absorb_calm
    monkeypatch.setattr(EvtThreshold, "absorb_calm", lambda self, c: calm.append(c) or absorb(self, c))
    fleet, alone = detector(True), detector(False)
    cuts = list(range(0, len(ts), 97)) + [len(ts)]
    seen = []
    for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        got, want = step(fleet, lo, hi), step(alone, lo, hi)
        assert got == want, k
        seen += [(e["entity"], e["state"]) for e in want[0]]
        if k == len(cuts) // 2:  # restart both from a snapshot and replay the last 2 batches
            assert states(fleet) == states(alone)
            snaps = {e: alone.table.get(e).state_dict() for e in alone.table.live()}
            fleet, alone = detector(True), detector(False)
            for det in (fleet, alone):
                for e, snap in snaps.items():
                    det.restore(e, snap)
            for lo2, hi2 in zip(cuts[k - 1:k + 1], cuts[k:k + 2]):
                got, want = step(fleet, lo2, hi2), step(alone, lo2, hi2)
                assert got == want and want[3] > 0  # replayed readings were skipped alike
    assert states(fleet) == states(alone)
    assert ("unit-07", "open") in seen and ("unit-07", "resolved") in seen, seen
    # both shortcuts were taken, and not for everything
    assert 0.5 * len(ts) < sum(int(m.counts.sum()) for m in taken) < len(ts)
    assert 0.5 * len(ts) < sum(calm) < len(ts)


def test_the_detector_benchmark_times_every_stage_both_ways(artifact, capsys):
    """``stream-ae bench detector`` on a small model: figures for each entity count, for the
    entities together and one by one, over the same windows; a bad flag is a usage error."""
    import json

    from stream_ae.bench.detector import run_detector_bench
    from stream_ae.cli import main

    result = run_detector_bench(entities=(4, 64), n=3000, artifact=artifact)
    assert json.loads(capsys.readouterr().out) == result
    for e in ("4", "64"):
        both = result["entities"][e]
        assert both["together"]["windows"] == both["one_by_one"]["windows"] >= 2000
        for way in ("together", "one_by_one"):
            us = both[way]["us_per_reading"]
            assert set(us) == {"decode", "batch", "prepare", "score", "finish"} and min(us.values()) > 0
        assert both["prepare_plus_finish_speedup"] > 0
        checkpoint = both["together"]["checkpoint"]  # every entity changed: each one written
        assert checkpoint["entities"] == int(e) and checkpoint["state_bytes_per_entity"] > 0
    assert main(["bench", "detector", "--entities", "16,x"]) == 2
    assert "--entities takes comma-separated positive integers" in capsys.readouterr().err
    assert main(["bench", "detector", "--n", "100"]) == 2
    assert "--n must be at least 2048 readings" in capsys.readouterr().err
