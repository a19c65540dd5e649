"""Per-entity cleaning and windowing: the one rule that stream and backfill share.

A :class:`SeriesWindower` takes the readings of one entity in time order, chunk by chunk
(one row from Kafka or a million from Parquet), and returns the windows they complete.
The rule depends only on the sequence of rows, never on how it was chunked:

* a timestamp equal to the last accepted one is dropped (``"duplicate"``), an older one is
  rejected (``"out_of_order"``); the caller decides whether that is an error or a dead letter;
* a step longer than ``max_gap_s`` starts a new segment (no window spans the gap, and no
  value is forward-filled across it);
* a missing value (NaN or inf) is replaced by the channel's last value, causally, for up to
  ``max_fill`` consecutive rows; a row with a longer run never enters a window and the
  segment restarts after it;
* a window ends at the k-th windowable row of a segment when ``k >= length`` and
  ``(k - length) % hop == 0``.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import numpy as np

from stream_ae.configs import from_mapping, spec_dict
from stream_ae.errors import ConfigError, DataError

_NEG = np.int64(-(2**62))  # "no such row" position, far below any real one
_NONE = np.zeros(0, np.int64)  # no rejected rows (read-only: shared by every clean push)
_NONE.flags.writeable = False
_NO_REASONS = np.where(_NONE == 0, "duplicate", "out_of_order")  # their reasons, typed as push's
_NO_REASONS.flags.writeable = False


@dataclass(frozen=True)
class WindowSpec:
    """How rows become windows.

    Examples
    --------
    >>> WindowSpec(length=30, hop=5).hop
    5
    """

    length: int = 60
    hop: int = 1
    max_gap_s: float | None = None
    max_fill: int = 5

    def __post_init__(self) -> None:
        # integers, not 60.0 or True: a float length passed every check and broke the first
        # window's slice (numpy integers are taken, as ints)
        for name, least, what in (("length", 1, "a positive integer"), ("hop", 1, "a positive integer"),
                                  ("max_fill", 0, "an integer >= 0")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ConfigError(f"WindowSpec.{name} must be {what}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.max_gap_s is not None and not self.max_gap_s > 0:
            raise ConfigError(f"WindowSpec.max_gap_s must be > 0 seconds or None, got {self.max_gap_s!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WindowSpec":
        return from_mapping(cls, d, "window")


def sliding_windows(rows: np.ndarray, length: int, hop: int = 1) -> np.ndarray:
    """Read-only ``(B, T, C)`` view of every ``length``-row window of ``rows`` ``(N, C)``, every ``hop`` rows.

    Examples
    --------
    >>> rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    >>> w = sliding_windows(rows, 3, hop=2)
    >>> w.shape, np.shares_memory(w, rows)
    ((2, 3, 2), True)
    >>> w[1, :, 0].tolist()
    [4.0, 6.0, 8.0]
    """
    rows = np.asarray(rows)
    if len(rows) < length:
        return np.empty((0, length) + rows.shape[1:], rows.dtype)
    view = np.lib.stride_tricks.sliding_window_view(rows, length, axis=0)[::hop]  # (B, C, T)
    return np.moveaxis(view, -1, 1)  # (B, T, C)


@dataclass
class WindowBatch:
    """What one :meth:`SeriesWindower.push` produced.

    ``rows`` holds the carried tail and the accepted, cleaned new rows; window ``b`` is
    ``rows[starts[b] : starts[b] + length]``. ``length`` is the window length (an addition to
    the contract, so that :attr:`windows` needs nothing else).
    """

    rows: np.ndarray  # (M, C) float32
    starts: np.ndarray  # (B,) int64
    start_ts: np.ndarray  # (B,) int64 ns
    end_ts: np.ndarray  # (B,) int64 ns
    end_index: np.ndarray  # (B,) int64 index into the pushed chunk
    rejected: np.ndarray  # (R,) int64 index into the pushed chunk
    reasons: np.ndarray  # (R,) str
    length: int

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def windows(self) -> np.ndarray:
        """``(B, T, C)`` read-only view of the windows.

        A view whenever the starts are evenly spaced (always within one segment); windows
        from several segments of different phase are gathered in one vectorised copy.
        """
        all_windows = sliding_windows(self.rows, self.length)  # (M - T + 1, T, C)
        n = len(self.starts)
        if n == 0:
            return all_windows[:0]
        step = int(self.starts[1] - self.starts[0]) if n > 1 else 1
        first = int(self.starts[0])
        if step > 0 and np.array_equal(self.starts, first + step * np.arange(n)):
            return all_windows[first : first + step * (n - 1) + 1 : step]
        out = all_windows[self.starts]
        out.flags.writeable = False
        return out


class SeriesWindower:
    """Cleans the readings of one entity and cuts them into windows, chunk by chunk.

    Carries at most ``length - 1`` rows between pushes.

    Examples
    --------
    >>> w = SeriesWindower(WindowSpec(length=3, hop=2), n_channels=1)
    >>> ts = np.arange(6, dtype=np.int64) * 1_000_000_000
    >>> b = w.push(ts, np.arange(6, dtype=np.float32)[:, None])
    >>> b.windows[:, :, 0].tolist(), b.end_index.tolist()
    ([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]], [2, 4])
    >>> b = w.push(ts[2:3], np.zeros((1, 1), np.float32))  # an old reading comes late
    >>> b.rejected.tolist(), b.reasons.tolist()
    ([0], ['out_of_order'])
    """

    def __init__(self, spec: WindowSpec, n_channels: int):
        if int(n_channels) != n_channels or n_channels < 1:
            raise ConfigError(f"n_channels must be a positive integer, got {n_channels!r}")
        self.spec = spec
        self.n_channels = int(n_channels)
        self._max_gap_ns = None if spec.max_gap_s is None else int(round(spec.max_gap_s * 1e9))
        self._reset()

    def _reset(self) -> None:
        c = self.n_channels
        self._last_ts: int | None = None
        self._k = 0  # windowable rows in the current segment (normalised, see _normalise_k)
        self._run = np.zeros(c, np.int64)  # missing rows since the channel's last value
        self._last = np.full(c, np.nan, np.float32)  # last value per channel; NaN: none to fill from
        self._tail_rows = np.empty((0, c), np.float32)
        self._tail_ts = np.empty(0, np.int64)

    # -- input checks -------------------------------------------------------------------
    def _coerce(self, ts, values) -> tuple[np.ndarray, np.ndarray]:
        ts = np.asarray(ts)
        if ts.dtype.kind == "M":
            ts = ts.astype("datetime64[ns]").view(np.int64)
        elif ts.dtype.kind in "iu" or (ts.size == 0 and ts.dtype.kind == "f"):
            ts = ts.astype(np.int64, copy=False)
        else:
            raise DataError(f"timestamps must be int64 ns since epoch or datetime64, got dtype {ts.dtype}")
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 1 and self.n_channels == 1:
            values = values[:, None]
        if ts.ndim != 1 or values.shape != (len(ts), self.n_channels):
            raise DataError(
                f"push expects ts (N,) and values (N, {self.n_channels}); got ts {ts.shape} and values {values.shape}"
            )
        return ts, values

    # -- the rule -----------------------------------------------------------------------
    def push(self, ts: np.ndarray, values: np.ndarray) -> WindowBatch:
        """Add the next readings of this entity; return the windows they complete."""
        ts, values = self._coerce(ts, values)
        clean = self._push_clean(ts, values)
        if clean is not None:
            return clean
        L, hop, n = self.spec.length, self.spec.hop, len(ts)
        last_ts = int(_NEG) if self._last_ts is None else self._last_ts

        # ordering: accepted iff newer than everything before (rejected rows never raise the max)
        prev = np.maximum.accumulate(np.concatenate([[last_ts], ts[:-1]])) if n else ts
        accepted = ts > prev
        rejected = np.flatnonzero(~accepted)
        reasons = np.where(ts[rejected] == prev[rejected], "duplicate", "out_of_order")
        acc = np.flatnonzero(accepted) if len(rejected) else np.arange(n)
        a_ts, a_val = ts[acc], values[acc]  # (M,), (M, C)
        m = len(acc)
        idx = np.arange(m, dtype=np.int64)

        gap = np.zeros(m, bool)
        if self._max_gap_ns is not None and m:
            steps = np.diff(a_ts, prepend=last_ts)
            gap = steps > self._max_gap_ns
            if self._last_ts is None:
                gap[0] = False

        filled, row_ok, src = self._fill(a_val, idx, gap)

        # k = windowable rows in the segment up to each row; a gap row starts a segment,
        # a row with unfilled gaps ends one
        brk = np.where(row_ok, _NEG, idx)
        brk = np.maximum(brk, np.where(gap, idx - 1, _NEG))
        brk = np.maximum.accumulate(np.concatenate([[-1 - self._k], brk]))[1:]
        k = idx - brk
        ends = np.flatnonzero(row_ok & (k >= L) & ((k - L) % hop == 0))

        ok = np.flatnonzero(row_ok) if not row_ok.all() else idx
        n_tail = len(self._tail_rows)
        rows = np.concatenate([self._tail_rows, filled[ok]])  # (M', C)
        rows_ts = np.concatenate([self._tail_ts, a_ts[ok]])
        pos = n_tail + np.cumsum(row_ok)[ends] - 1
        starts = (pos - L + 1).astype(np.int64)

        if m:
            self._last_ts = int(a_ts[-1])
            self._k = self._normalise_k(int(k[-1]))
            has_src = src[-1] > _NEG
            lv = src[-1]
            carried = np.where(lv >= 0, a_val[np.clip(lv, 0, None), np.arange(self.n_channels)], self._last)
            self._last = np.where(has_src, carried, np.nan).astype(np.float32)
            self._run = np.where(has_src, (m - 1) - lv, 0).astype(np.int64)
            keep = min(self._k, L - 1)
            self._tail_rows = rows[len(rows) - keep :].copy()
            self._tail_ts = rows_ts[len(rows) - keep :].copy()
        return WindowBatch(
            rows=rows,
            starts=starts,
            start_ts=rows_ts[starts],
            end_ts=a_ts[ends],
            end_index=acc[ends].astype(np.int64),
            rejected=rejected.astype(np.int64),
            reasons=reasons,
            length=L,
        )

    def _push_clean(self, ts: np.ndarray, values: np.ndarray) -> WindowBatch | None:
        """:meth:`push` for the stream's usual chunk: rows in order, newer than the last, no
        gap, every value present. The same windows and state as the general rule (which then
        has nothing to reject, fill or break) in a quarter of the NumPy calls: with many
        entities a micro-batch brings each only a few rows, so the per-call cost is what counts.
        None when the chunk is not such a chunk."""
        n, L, hop = len(ts), self.spec.length, self.spec.hop
        if n == 0 or (self._last_ts is not None and ts[0] <= self._last_ts):
            return None
        steps = np.diff(ts)  # (n - 1,)
        if (n > 1 and steps.min() <= 0) or not np.isfinite(values).all():
            return None
        if self._max_gap_ns is not None and (
                (n > 1 and steps.max() > self._max_gap_ns)
                or (self._last_ts is not None and ts[0] - self._last_ts > self._max_gap_ns)):
            return None
        k = self._k + 1 + np.arange(n, dtype=np.int64)  # windowable rows up to each row
        ends = np.flatnonzero((k >= L) & ((k - L) % hop == 0))
        n_tail = len(self._tail_rows)
        rows = np.concatenate([self._tail_rows, values])  # (n_tail + n, C)
        rows_ts = np.concatenate([self._tail_ts, ts])
        starts = n_tail + ends - L + 1
        self._last_ts = int(ts[-1])
        self._k = self._normalise_k(int(k[-1]))
        self._last = values[-1].astype(np.float32)
        self._run = np.zeros(self.n_channels, np.int64)
        keep = min(self._k, L - 1)
        self._tail_rows = rows[len(rows) - keep:].copy()
        self._tail_ts = rows_ts[len(rows) - keep:].copy()
        return WindowBatch(rows=rows, starts=starts, start_ts=rows_ts[starts], end_ts=ts[ends], end_index=ends,
                           rejected=_NONE, reasons=_NO_REASONS, length=L)

    def _fill(self, a_val: np.ndarray, idx: np.ndarray, gap: np.ndarray):
        """Causal forward fill. Returns filled values (M, C), row_ok (M,), and per row and
        channel the position of the value used (negative: carried from before; _NEG: none)."""
        valid = np.isfinite(a_val)  # (M, C)
        carry = np.where(np.isnan(self._last), _NEG, -1 - self._run)  # (C,)
        src = np.where(valid, idx[:, None], _NEG)
        src = np.maximum.accumulate(np.concatenate([carry[None], src]), axis=0)[1:]  # (M, C)
        if gap.any():  # nothing is filled across a gap
            reset = np.maximum.accumulate(np.where(gap, idx, _NEG))
            src = np.where(src >= reset[:, None], src, _NEG)
        if valid.all():
            return a_val, np.ones(len(idx), bool), src
        ok_c = (src > _NEG) & (idx[:, None] - src <= self.spec.max_fill)
        from_chunk = np.take_along_axis(a_val, np.clip(src, 0, None), axis=0)
        filled = np.where(src >= 0, from_chunk, self._last[None, :]).astype(np.float32)
        return filled, ok_c.all(axis=1), src

    def _normalise_k(self, k: int) -> int:
        # past `length`, only the phase modulo hop matters; keeps the state bounded
        L, hop = self.spec.length, self.spec.hop
        return k if k < L else L + (k - L) % hop

    # -- state --------------------------------------------------------------------------
    def channels_without_value(self) -> list[int]:
        """Channels with no value to fill from now: none yet, or missing for longer than ``max_fill``."""
        return np.flatnonzero(np.isnan(self._last)).tolist()

    def state_dict(self) -> dict:
        """JSON-safe state (NaN may appear as a float) that :meth:`load_state_dict` restores exactly."""
        return {
            "spec": spec_dict(self.spec),
            "n_channels": self.n_channels,
            "last_ts": self._last_ts,
            "k": self._k,
            "run": self._run.tolist(),
            "last": self._last.tolist(),
            "tail_ts": self._tail_ts.tolist(),
            "tail_rows": self._tail_rows.tolist(),
        }

    def respec(self, spec: WindowSpec) -> None:
        """Go on under ``spec``, of the same window length (another hop, gap or fill limit: a
        new model). The rows held stay; the new hop counts from the last window.

        >>> w = SeriesWindower(WindowSpec(length=3), 1)
        >>> ts = np.arange(1, 6, dtype=np.int64) * 10**9
        >>> w.push(ts, np.ones((5, 1))).end_index.tolist()  # hop 1
        [2, 3, 4]
        >>> w.respec(WindowSpec(length=3, hop=2))
        >>> w.push(ts + 5 * 10**9, np.ones((5, 1))).end_index.tolist()
        [1, 3]
        """
        if spec.length != self.spec.length:
            raise ConfigError(f"a windower of {self.spec.length}-row windows cannot go on with {spec.length}-row ones")
        self.spec = spec
        self._max_gap_ns = None if spec.max_gap_s is None else int(round(spec.max_gap_s * 1e9))
        self._k = self._normalise_k(self._k)

    def start_after(self, last_ts: int | None) -> None:
        """Hold no rows, as a new windower, but go on refusing readings at or before ``last_ts``
        (rows saved for another window length or channel set cannot be used; the order can).

        >>> w = SeriesWindower(WindowSpec(length=2), 1)
        >>> w.start_after(5 * 10**9)
        >>> w.push(np.array([4, 6, 7]) * 10**9, np.ones((3, 1))).reasons.tolist(), w.state_dict()["tail_ts"]
        (['out_of_order'], [7000000000])
        """
        self._reset()
        self._last_ts = None if last_ts is None else int(last_ts)

    def load_state_dict(self, d: dict) -> None:
        """Restore a state saved by :meth:`state_dict` with the same window length and channel
        count; one saved under another hop, gap or fill limit goes on under this one (:meth:`respec`)."""
        try:
            spec, n_channels = WindowSpec.from_dict(d["spec"]), int(d["n_channels"])
            if spec.length != self.spec.length or n_channels != self.n_channels:
                raise ConfigError(
                    f"windower state was saved for {spec} with {n_channels} channels, "
                    f"this windower has {self.spec} with {self.n_channels}"
                )
            c = self.n_channels
            self._last_ts = None if d["last_ts"] is None else int(d["last_ts"])
            self._k = self._normalise_k(int(d["k"]))
            self._run = np.asarray(d["run"], np.int64).reshape(c)
            self._last = np.asarray(d["last"], np.float32).reshape(c)
            self._tail_ts = np.asarray(d["tail_ts"], np.int64).reshape(-1)
            self._tail_rows = np.asarray(d["tail_rows"], np.float32).reshape(len(self._tail_ts), c)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"windower state is malformed ({type(exc).__name__}: {exc}); it cannot be restored") from exc

