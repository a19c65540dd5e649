"""Alert policy: when an alert opens, updates, resolves, and how severe it is."""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import asdict, dataclass

from stream_ae.configs import from_mapping
from stream_ae.errors import ConfigError


@dataclass(frozen=True)
class AlertPolicy:
    """Settings of the alert state machine (times are event time, in seconds).

    Parameters
    ----------
    k, n
        An alert opens when ``k`` of the last ``n`` windows are flagged.
    update_interval_s
        An open alert emits an update at most this often ...
    update_min_change
        ... and only if its severity changed or its score moved by at least this fraction
        of the last emitted score.
    quiet_s
        An alert resolves after this long without a flagged window: at the first window that
        lies ``quiet_s`` past the last flagged one, unless that window is flagged and so was
        the one before it (a gap in the data is not quiet: a fault on data sparser than
        ``quiet_s`` stays one alert).
    silence_s
        An alert also resolves when its entity sends no window for this long while other
        entities' windows go on (the stream measures it in its readings partition's event
        time: the latest window end seen there), so a sensor that dies mid-alert does not
        leave the alert open for good. None: five times ``quiet_s``; 0: never.
    bands
        ``(name, ratio)`` pairs, ratios increasing: a window's severity is the last band whose
        ratio is at most ``score / threshold`` (the first band if none is).
    top_k
        Channels named in an event, by their share of the window's error.

    Examples
    --------
    >>> p = AlertPolicy()
    >>> p.severity(1.3), p.severity(2.0)
    ('warning', 'critical')
    >>> AlertPolicy.from_dict(p.to_dict()) == p
    True
    """

    k: int = 3
    n: int = 5
    update_interval_s: float = 30.0
    update_min_change: float = 0.2
    quiet_s: float = 120.0
    silence_s: float | None = None
    bands: tuple[tuple[str, float], ...] = (("warning", 1.0), ("critical", 2.0))
    top_k: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", _as_bands(self.bands))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        for name in ("k", "n", "top_k"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int):
                raise ConfigError(f"alert {name} must be an integer, got {x!r}")
        if not 1 <= self.k <= self.n:
            raise ConfigError(f"alert policy needs 1 <= k <= n, got k={self.k}, n={self.n}")
        if self.top_k < 0:
            raise ConfigError(f"alert top_k must be >= 0, got {self.top_k}")
        for name in ("update_interval_s", "update_min_change", "quiet_s"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not (math.isfinite(x) and x >= 0):
                raise ConfigError(f"alert {name} must be a number >= 0, got {x!r}")
        if self.quiet_s <= 0:
            raise ConfigError(f"alert quiet_s must be > 0, got {self.quiet_s}")
        x = self.silence_s
        if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)
                              or (x != 0 and x < self.quiet_s)):
            raise ConfigError(f"alert silence_s must be 0 (never) or at least quiet_s ({self.quiet_s}), got {x!r}")
        names = [b[0] for b in self.bands]
        ratios = [b[1] for b in self.bands]
        if not names or len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"alert bands need distinct non-empty names, got {names}")
        if any(not (r > 0 and math.isfinite(r)) for r in ratios) or ratios != sorted(set(ratios)):
            raise ConfigError(f"alert band ratios must be positive and strictly increasing, got {ratios}")

    @property
    def silence(self) -> float:
        """``silence_s`` in effect, in seconds (0: never).

        >>> AlertPolicy(quiet_s=60).silence, AlertPolicy(silence_s=0).silence
        (300.0, 0.0)
        """
        return 5.0 * self.quiet_s if self.silence_s is None else float(self.silence_s)

    @property
    def silence_ns(self) -> int:
        """:attr:`silence` in nanoseconds, the unit of event times (0: never).

        >>> AlertPolicy(quiet_s=60).silence_ns
        300000000000
        """
        return int(round(self.silence * 1e9))

    def band(self, ratio: float) -> int:
        """Index of the severity band for ``score / threshold``."""
        return max(bisect_right(self._ratios, ratio) - 1, 0)

    def severity(self, ratio: float) -> str:
        """Name of the severity band for ``score / threshold``."""
        return self.bands[self.band(ratio)][0]

    @property
    def _ratios(self) -> list[float]:
        return [b[1] for b in self.bands]

    def to_dict(self) -> dict:
        """JSON-safe dict (bands as ``[[name, ratio], ...]``)."""
        d = asdict(self)
        d["bands"] = [[name, ratio] for name, ratio in self.bands]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AlertPolicy":
        """Build from a dict; unknown keys are a :class:`ConfigError`."""
        return from_mapping(cls, d, "alert")

    def band_map(self, saved: "AlertPolicy") -> list[int]:
        """For alert state saved under ``saved`` (the settings changed since): the band each of
        its bands becomes here, the one of the same name, else the nearest index that exists.

        >>> AlertPolicy(bands=[("minor", 1.0), ("critical", 3.0)]).band_map(AlertPolicy())  # warning, critical
        [0, 1]
        """
        names = [name for name, _ in self.bands]
        return [names.index(name) if name in names else min(i, len(names) - 1)
                for i, (name, _) in enumerate(saved.bands)]


def _as_bands(bands) -> tuple[tuple[str, float], ...]:
    try:
        pairs = [(name, ratio) for name, ratio in bands]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"alert bands must be (name, ratio) pairs, got {bands!r}") from exc
    for name, ratio in pairs:
        if not isinstance(name, str) or isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise ConfigError(f"alert band must be a (name, ratio) pair, got {(name, ratio)!r}")
    return tuple((name, float(ratio)) for name, ratio in pairs)
