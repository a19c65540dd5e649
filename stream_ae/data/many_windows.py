"""Many entities' clean chunks windowed in one set of NumPy calls: :func:`push_clean_many`.

The stream's micro-batch brings each of thousands of entities a reading or two; pushed one
windower at a time, the dozen NumPy calls of each push cost more than the readings. Here
every chunk that :meth:`SeriesWindower._push_clean` would accept is windowed at once, with
the same windows and the same resulting state (the windower's own fields are read and
written here, as its push would). Anything else is left to :meth:`SeriesWindower.push`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream_ae.data.windows import _NEG, _NONE, SeriesWindower
from stream_ae.errors import ConfigError, DataError


@dataclass
class ManyWindows:
    """What :func:`push_clean_many` produced: the windows of every windower that took its chunk.

    Rows are laid out windower by windower (those with ``taken``), each block its carried
    tail then its new rows, exactly the ``rows`` its own :meth:`SeriesWindower.push` would give.
    """

    taken: np.ndarray  # (E,) bool: windower i took its chunk (the others were not touched)
    rows: np.ndarray  # (M, C) float32
    starts: np.ndarray  # (B,) int64 window starts into ``rows``, windower by windower, in time order
    end_pos: np.ndarray  # (B,) int64 position in the input arrays of each window's last row
    owner: np.ndarray  # (B,) int64 the windower each window belongs to
    counts: np.ndarray  # (E,) int64 windows per windower


def push_clean_many(windowers: list[SeriesWindower], ts: np.ndarray, values: np.ndarray,
                    n: np.ndarray, eligible: np.ndarray | None = None) -> ManyWindows:
    """:meth:`SeriesWindower.push` of many windowers at once, for those whose chunk is clean.

    Chunk ``i`` is the next ``n[i] >= 1`` rows of ``ts`` ``(N,)`` / ``values`` ``(N, C)``
    (chunks back to back, windower by windower). A windower takes its chunk when it is
    ``eligible`` and the chunk is what :meth:`SeriesWindower._push_clean` accepts (in order,
    newer than the last row, no gap, no missing value); it then ends in exactly the state
    and gives exactly the windows that ``push`` would. The others are left untouched, for
    ``push`` to apply the general rule. With thousands of entities a micro-batch brings each
    a row or two: one set of NumPy calls for all of them, instead of a dozen per entity.
    """
    E, N = len(windowers), len(ts)
    n = np.asarray(n, np.int64)
    ts, values = np.asarray(ts, np.int64), np.asarray(values, np.float32)
    if E == 0:
        return ManyWindows(np.zeros(0, bool), np.empty((0, values.shape[1]), np.float32), _NONE, _NONE,
                           _NONE, _NONE)
    spec, c = windowers[0].spec, windowers[0].n_channels
    if any(w.spec != spec or w.n_channels != c for w in windowers):
        raise ConfigError("push_clean_many needs windowers of one spec and channel count")
    if n.shape != (E,) or (n < 1).any() or int(n.sum()) != N or values.shape != (N, c):
        raise DataError(f"push_clean_many: chunks {n.tolist()[:8]}... do not cover {N} rows of {c} channels")
    L, hop, max_gap = spec.length, spec.hop, windowers[0]._max_gap_ns
    meta = [(w._last_ts, w._k, len(w._tail_rows)) for w in windowers]
    has_last = np.fromiter((m[0] is not None for m in meta), bool, E)
    last_ts = np.fromiter((_NEG if m[0] is None else m[0] for m in meta), np.int64, E)
    k0 = np.fromiter((m[1] for m in meta), np.int64, E)
    tail_n = np.fromiter((m[2] for m in meta), np.int64, E)

    first = np.cumsum(n) - n  # (E,) where each chunk starts
    seg = np.repeat(np.arange(E), n)  # (N,) the windower of each row
    pos = np.arange(N) - first[seg]  # (N,) position within its chunk
    prev = np.empty(N, np.int64)
    prev[1:] = ts[:-1]
    prev[first] = last_ts
    step = ts - prev
    bad = (step <= 0) | ~np.isfinite(values).all(axis=1)
    if max_gap is not None:
        bad |= (step > max_gap) & ~((pos == 0) & ~has_last[seg])  # no gap before a windower's first row
    taken = np.bincount(seg, weights=bad, minlength=E) == 0
    if eligible is not None:
        taken &= eligible

    mine = taken[seg]  # (N,) rows of windowers that take their chunk
    k = k0[seg] + 1 + pos  # windowable rows of the segment up to each row
    ends = np.flatnonzero(mine & (k >= L) & ((k - L) % hop == 0))  # (B,)
    m = np.where(taken, tail_n + n, 0)  # rows per windower block
    base = np.cumsum(m) - m
    row_of = base[seg] + tail_n[seg] + pos  # (N,) where each taken row goes
    rows = np.empty((int(m.sum()), c), np.float32)
    rows_ts = np.empty(len(rows), np.int64)
    rows[row_of[mine]] = values[mine]
    rows_ts[row_of[mine]] = ts[mine]
    who = np.flatnonzero(taken)
    with_tail = who[tail_n[who] > 0]
    if len(with_tail):
        tn = tail_n[with_tail]
        at = np.repeat(base[with_tail] - (np.cumsum(tn) - tn), tn) + np.arange(int(tn.sum()))
        rows[at] = np.concatenate([windowers[i]._tail_rows for i in with_tail.tolist()])
        rows_ts[at] = np.concatenate([windowers[i]._tail_ts for i in with_tail.tolist()])

    # the state each windower's own _push_clean leaves
    k_end = k0 + n
    k_end = np.where(k_end < L, k_end, L + (k_end - L) % hop)
    keep = np.minimum(k_end, L - 1)
    block_end = base + m
    last = first + n - 1
    zeros = np.zeros(c, np.int64)
    for i, t, kk, hi, lo, r in zip(who.tolist(), ts[last[who]].tolist(), k_end[who].tolist(),
                                   block_end[who].tolist(), (block_end - keep)[who].tolist(), last[who].tolist()):
        w = windowers[i]
        w._last_ts, w._k = t, kk
        w._last, w._run = values[r].astype(np.float32), zeros.copy()
        w._tail_rows, w._tail_ts = rows[lo:hi].copy(), rows_ts[lo:hi].copy()
    owner = seg[ends]
    return ManyWindows(taken, rows, (row_of[ends] - L + 1).astype(np.int64), ends.astype(np.int64), owner,
                       np.bincount(owner, minlength=E).astype(np.int64))
