"""SeriesWindower: the window rule, and that it does not depend on how a series is chunked."""

import json

import numpy as np
import pytest

from stream_ae.data.many_windows import push_clean_many
from stream_ae.data.windows import SeriesWindower, WindowSpec, sliding_windows
from stream_ae.errors import ConfigError, DataError

SEC = 1_000_000_000


def reference(spec: WindowSpec, n_channels: int, ts, values):
    """The rule written row by row in plain Python, as the docs state it."""
    gap_ns = None if spec.max_gap_s is None else spec.max_gap_s * SEC
    last_ts, seg, last, run = None, [], [None] * n_channels, [0] * n_channels
    windows, end_index, rejected = [], [], []
    for i, t in enumerate(ts):
        if last_ts is not None and t <= last_ts:
            rejected.append((i, "duplicate" if t == last_ts else "out_of_order"))
            continue
        if gap_ns is not None and last_ts is not None and t - last_ts > gap_ns:
            seg, last = [], [None] * n_channels
        last_ts = t
        row, ok = values[i].copy(), True
        for c in range(n_channels):
            if np.isfinite(row[c]):
                last[c], run[c] = row[c], 0
            else:
                run[c] += 1
                if last[c] is None or run[c] > spec.max_fill:
                    ok = False
                else:
                    row[c] = last[c]
        if not ok:
            seg = []
            continue
        seg.append((t, row))
        k = len(seg)
        if k >= spec.length and (k - spec.length) % spec.hop == 0:
            windows.append((seg[-spec.length][0], t, np.stack([r for _, r in seg[-spec.length :]])))
            end_index.append(i)
    return windows, end_index, rejected


def messy_series(rng, n=300, c=3):
    """Irregular steps, gaps, duplicates, late rows, short and long NaN runs, an inf."""
    steps = rng.choice([1, 1, 1, 1, 2, 9, 0, -3], size=n) * SEC
    ts = np.cumsum(steps).astype(np.int64) + 1_700_000_000 * SEC
    values = rng.normal(size=(n, c)).astype(np.float32)
    for _ in range(rng.integers(0, 8)):
        s, ch = rng.integers(0, n), rng.integers(0, c)
        values[s : s + rng.integers(1, 8), ch] = np.nan
    if rng.random() < 0.5:
        values[rng.integers(0, n), rng.integers(0, c)] = np.inf
    return ts, values


def push_chunked(spec, c, ts, values, cuts, round_trip_at=()):
    w = SeriesWindower(spec, c)
    wins, start_ts, end_ts, end_index, rejected, reasons = [], [], [], [], [], []
    bounds = [0, *cuts, len(ts)]
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if j in round_trip_at:  # resume from a JSON copy of the state, as the stream does
            fresh = SeriesWindower(spec, c)
            fresh.load_state_dict(json.loads(json.dumps(w.state_dict())))
            w = fresh
        batch = w.push(ts[a:b], values[a:b])
        assert len(w._tail_rows) <= spec.length - 1
        wins.append(batch.windows)
        start_ts.append(batch.start_ts)
        end_ts.append(batch.end_ts)
        end_index.append(batch.end_index + a)
        rejected.append(batch.rejected + a)
        reasons.append(batch.reasons)
    cat = np.concatenate
    return cat(wins), cat(start_ts), cat(end_ts), cat(end_index), cat(rejected), cat(reasons)


SPECS = [
    WindowSpec(length=1, hop=1, max_fill=0),
    WindowSpec(length=5, hop=1, max_gap_s=5, max_fill=2),
    WindowSpec(length=7, hop=3, max_gap_s=5, max_fill=3),
    WindowSpec(length=4, hop=2, max_gap_s=None, max_fill=0),
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_same_windows_for_any_chunking_and_matches_row_by_row_rule(spec):
    rng = np.random.default_rng(0)
    for _ in range(12):
        ts, values = messy_series(rng)
        n, c = values.shape
        ref_windows, ref_end, ref_rej = reference(spec, c, ts, values)
        random_cuts = sorted(rng.choice(np.arange(1, n), size=rng.integers(1, 40), replace=False).tolist())
        chunkings = {
            "one chunk": ([], ()),
            "random": (random_cuts, ()),
            "random + empty chunks": (sorted(random_cuts + random_cuts[:5]), ()),
            "row by row": (list(range(1, n)), ()),
            "random + state round trips": (random_cuts, tuple(range(0, len(random_cuts), 3))),
        }
        for name, (cuts, trips) in chunkings.items():
            wins, start_ts, end_ts, end_index, rejected, reasons = push_chunked(spec, c, ts, values, cuts, trips)
            assert end_index.tolist() == ref_end, name
            assert start_ts.tolist() == [s for s, _, _ in ref_windows], name
            assert end_ts.tolist() == [e for _, e, _ in ref_windows], name
            np.testing.assert_array_equal(wins, np.stack([w for *_, w in ref_windows]).reshape(wins.shape), err_msg=name)
            assert list(zip(rejected.tolist(), reasons.tolist())) == ref_rej, name
            assert np.isfinite(wins).all()


def series(n, c=2, step_s=1):
    ts = np.arange(n, dtype=np.int64) * step_s * SEC
    values = np.arange(n * c, dtype=np.float32).reshape(n, c)
    return ts, values


def test_clean_chunk_gives_every_window_as_a_view():
    ts, values = series(100)
    batch = SeriesWindower(WindowSpec(length=10), 2).push(ts, values)
    assert batch.windows.shape == (91, 10, 2)
    assert np.shares_memory(batch.windows, batch.rows)
    assert not batch.windows.flags.writeable
    np.testing.assert_array_equal(batch.windows[5], values[5:15])
    assert batch.end_index.tolist() == list(range(9, 100))
    assert (batch.start_ts == ts[:91]).all() and (batch.end_ts == ts[9:]).all()


def test_hop_keeps_its_phase_across_pushes():
    ts, values = series(50)
    w = SeriesWindower(WindowSpec(length=10, hop=4), 2)
    first, second = w.push(ts[:23], values[:23]), w.push(ts[23:], values[23:])
    ends = first.end_index.tolist() + (second.end_index + 23).tolist()
    assert ends == list(range(9, 50, 4))
    assert np.shares_memory(second.windows, second.rows)
    np.testing.assert_array_equal(second.windows[0], values[16:26])  # ends at row 25, 7 rows from the tail


def test_gap_breaks_windows_and_is_not_filled_across():
    ts, values = series(30)
    ts[15:] += 100 * SEC
    values[15, 0] = np.nan  # right after the gap: nothing before the gap may fill it
    batch = SeriesWindower(WindowSpec(length=5, max_gap_s=10), 2).push(ts, values)
    assert batch.end_index.tolist() == list(range(4, 15)) + list(range(20, 30))
    assert (batch.end_ts - batch.start_ts <= 4 * SEC).all()


def test_short_nan_run_is_filled_from_the_past_long_run_breaks():
    ts, values = series(40, c=1)
    values[10:12, 0] = np.nan  # 2 rows: filled
    values[20:24, 0] = np.nan  # 4 rows: rows 20, 21 filled, 22 and 23 not
    batch = SeriesWindower(WindowSpec(length=3, max_fill=2), 1).push(ts, values)
    w = batch.windows[:, :, 0]
    assert [9.0, 9.0, 9.0] in w.tolist()  # rows 9, 10, 11 -> 10 and 11 take row 9's value
    assert not np.isnan(w).any()
    # the segment restarts at row 24: first window after it ends at row 26
    ends = batch.end_index.tolist()
    assert 21 in ends and 22 not in ends and 25 not in ends and 26 in ends


def test_nan_in_first_row_cannot_be_filled():
    ts, values = series(6, c=1)
    values[0, 0] = np.nan
    batch = SeriesWindower(WindowSpec(length=2, max_fill=5), 1).push(ts, values)
    assert batch.end_index.tolist() == [2, 3, 4, 5]


def test_duplicates_and_out_of_order_are_rejected_with_reasons():
    ts = np.array([0, 1, 1, 2, 0, 3], dtype=np.int64) * SEC
    values = np.zeros((6, 1), np.float32)
    batch = SeriesWindower(WindowSpec(length=2), 1).push(ts, values)
    assert batch.rejected.tolist() == [2, 4]
    assert batch.reasons.tolist() == ["duplicate", "out_of_order"]
    assert batch.end_index.tolist() == [1, 3, 5]


def test_empty_push_is_harmless():
    w = SeriesWindower(WindowSpec(length=3), 2)
    batch = w.push(np.empty(0, np.int64), np.empty((0, 2), np.float32))
    assert len(batch) == 0 and batch.windows.shape == (0, 3, 2)
    ts, values = series(3)
    assert len(w.push(ts, values)) == 1


def test_windows_from_two_segments_are_gathered_correctly():
    ts, values = series(20)
    ts[10:] += 60 * SEC
    batch = SeriesWindower(WindowSpec(length=4, hop=3, max_gap_s=2), 2).push(ts, values)
    for b, end in enumerate(batch.end_index):
        np.testing.assert_array_equal(batch.windows[b], values[end - 3 : end + 1])


def test_state_round_trip_is_json_safe_and_exact():
    ts, values = series(20, c=2)
    values[17:19, 1] = np.nan
    w = SeriesWindower(WindowSpec(length=6, hop=2, max_gap_s=3), 2)
    w.push(ts, values)
    state = json.loads(json.dumps(w.state_dict()))
    restored = SeriesWindower(WindowSpec(length=6, hop=2, max_gap_s=3), 2)
    restored.load_state_dict(state)
    more_ts, more_values = ts[-1] + np.arange(1, 9) * SEC, np.ones((8, 2), np.float32)
    a, b = w.push(more_ts, more_values), restored.push(more_ts, more_values)
    np.testing.assert_array_equal(a.windows, b.windows)
    assert a.end_index.tolist() == b.end_index.tolist() and len(a) > 0


def test_state_from_another_spec_is_refused():
    w = SeriesWindower(WindowSpec(length=6), 2)
    with pytest.raises(ConfigError, match="saved for"):
        SeriesWindower(WindowSpec(length=5), 2).load_state_dict(w.state_dict())


def test_bad_input_shapes_and_specs():
    with pytest.raises(DataError, match=r"values \(N, 2\)"):
        SeriesWindower(WindowSpec(), 2).push(np.zeros(3, np.int64), np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="hop"):
        WindowSpec(hop=0)
    with pytest.raises(ConfigError, match="max_gap_s"):
        WindowSpec(max_gap_s=-1)


def test_sliding_windows_helper():
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    w = sliding_windows(rows, 4, hop=3)
    assert w.shape == (3, 4, 2) and np.shares_memory(w, rows)
    np.testing.assert_array_equal(w[2], rows[6:10])
    assert sliding_windows(rows[:2], 4).shape == (0, 4, 2)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_the_clean_chunk_shortcut_gives_what_the_general_rule_gives(spec, monkeypatch):
    """Pushes of in-order, gap-free, complete rows take ``_push_clean``; batch for batch and state
    for state it must equal the general rule, also next to chunks that need the general rule."""
    rng = np.random.default_rng(1)
    ts = np.cumsum(rng.integers(1, 4, 400)).astype(np.int64) * SEC  # steps 1-3 s: within max_gap 5 s
    values = rng.normal(size=(400, 3)).astype(np.float32)
    values[150, 1] = np.nan  # one chunk with a short NaN run: the general rule
    ts[300:] += 60 * SEC  # a gap before row 300: the general rule, then clean again
    cuts = [0, *sorted(rng.choice(np.arange(1, 400), 60, replace=False).tolist()), 400]
    fast, general = SeriesWindower(spec, 3), SeriesWindower(spec, 3)
    for a, b in zip(cuts[:-1], cuts[1:]):
        with monkeypatch.context() as m:
            m.setattr(SeriesWindower, "_push_clean", lambda self, ts, values: None)
            want = general.push(ts[a:b], values[a:b])
        got = fast.push(ts[a:b], values[a:b])
        for field in ("rows", "starts", "start_ts", "end_ts", "end_index", "rejected", "reasons"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
            assert getattr(got, field).dtype == getattr(want, field).dtype, field
        assert json.dumps(fast.state_dict()) == json.dumps(general.state_dict())
    probe = SeriesWindower(spec, 3)
    assert probe._push_clean(ts[:10], values[:10]) is not None  # the shortcut does get taken
    assert probe._push_clean(ts[5:10], values[5:10]) is None  # rows not newer than the last: general rule


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_many_windowers_at_once_give_what_each_push_gives(spec):
    """``push_clean_many`` over many entities' chunks: every windower that takes its chunk
    ends in the state and gives the windows of its own ``push``; those whose chunk needs the
    general rule (or that are not eligible) are left untouched."""
    rng = np.random.default_rng(7)
    E, C = 40, 3
    fleet = [SeriesWindower(spec, C) for _ in range(E)]
    alone = [SeriesWindower(spec, C) for _ in range(E)]
    clock = np.zeros(E, np.int64)
    taken_total = 0
    for round_ in range(30):
        n = rng.integers(1, 6, E)  # 1-5 rows each, as a micro-batch brings them
        ts_parts, val_parts = [], []
        for e in range(E):
            steps = rng.integers(1, 4, n[e]).astype(np.int64) * SEC
            if rng.random() < 0.05:
                steps[0] += 60 * SEC  # a gap (breaks windows when max_gap_s is set)
            t = clock[e] + np.cumsum(steps)
            if rng.random() < 0.05:
                t[-1] = t[0]  # a duplicate or out-of-order row
            v = rng.normal(size=(n[e], C)).astype(np.float32)
            if rng.random() < 0.05:
                v[rng.integers(n[e]), rng.integers(C)] = np.nan  # a missing value
            clock[e] = max(clock[e], int(t.max()))
            ts_parts.append(t)
            val_parts.append(v)
        ts, values = np.concatenate(ts_parts), np.concatenate(val_parts)
        eligible = rng.random(E) > 0.1
        before = [json.dumps(w.state_dict()) for w in fleet]
        got = push_clean_many(fleet, ts, values, n, eligible)
        first = np.cumsum(n) - n
        for e in range(E):
            chunk = slice(first[e], first[e] + n[e])
            if not got.taken[e]:
                assert json.dumps(fleet[e].state_dict()) == before[e]  # untouched
                fleet[e].push(ts[chunk], values[chunk])
                alone[e].push(ts[chunk], values[chunk])
                continue
            taken_total += 1
            assert eligible[e]
            want = alone[e].push(ts[chunk], values[chunk])
            mine = got.owner == e
            assert mine.sum() == got.counts[e] == len(want)
            np.testing.assert_array_equal(got.end_pos[mine] - first[e], want.end_index)
            for s_got, s_want in zip(got.starts[mine], want.starts):
                np.testing.assert_array_equal(got.rows[s_got:s_got + spec.length],
                                              want.rows[s_want:s_want + spec.length])
            assert len(want.rejected) == 0
        for e in range(E):
            assert json.dumps(fleet[e].state_dict()) == json.dumps(alone[e].state_dict()), (round_, e)
    assert taken_total > 0.6 * 30 * E  # most chunks do take the many-windower path


def test_many_windowers_refuse_chunks_that_do_not_cover_the_rows():
    spec = WindowSpec(length=4)
    fleet = [SeriesWindower(spec, 2) for _ in range(2)]
    with pytest.raises(DataError, match="do not cover"):
        push_clean_many(fleet, np.arange(3) * SEC, np.zeros((3, 2)), [1, 1])
    with pytest.raises(DataError, match="do not cover"):
        push_clean_many(fleet, np.arange(2) * SEC, np.zeros((2, 2)), [2, 0])
    with pytest.raises(ConfigError, match="one spec"):
        push_clean_many([SeriesWindower(spec, 2), SeriesWindower(WindowSpec(length=5), 2)],
                        np.arange(2) * SEC, np.zeros((2, 2)), [1, 1])
