"""Column layout of a wide sensor table: which column is the entity, the time, the channels."""

from __future__ import annotations

from dataclasses import dataclass

from stream_ae.configs import from_mapping
from stream_ae.errors import ConfigError

TIMESTAMP_UNITS = ("s", "ms", "us", "ns")


@dataclass(frozen=True)
class Layout:
    """Names of the columns of a wide table: one row per (entity, timestamp), one column per channel.

    Parameters
    ----------
    entity : str
        Column naming the machine / unit a row belongs to.
    timestamp : str
        Column holding the reading time (a Parquet timestamp; naive times are taken as UTC).
    channels : tuple of str or None
        Channel columns, in model order. None: every numeric column except the entity, the
        timestamp and hive partition keys, of the files the time range reaches, in the order
        they first appear (files in path order).
    timestamp_unit : str or None
        Only for integer epoch timestamp columns: their unit, one of "s", "ms", "us", "ns".
        Integer timestamps are refused unless this is given, so a unit is never guessed.

    Examples
    --------
    >>> Layout(entity="unit", channels=["a", "b"]).channels
    ('a', 'b')
    """

    entity: str = "entity"
    timestamp: str = "timestamp"
    channels: tuple[str, ...] | None = None
    timestamp_unit: str | None = None

    def __post_init__(self) -> None:
        if self.channels is not None:
            channels = tuple(self.channels)
            object.__setattr__(self, "channels", channels)
            if not channels:
                raise ConfigError("Layout.channels is empty; give at least one channel or None for all numeric columns")
            if len(set(channels)) != len(channels):
                raise ConfigError(f"Layout.channels repeats a name: {list(channels)}")
            if self.entity in channels or self.timestamp in channels:
                raise ConfigError("Layout.channels must not contain the entity or timestamp column")
        if self.entity == self.timestamp:
            raise ConfigError(f"Layout.entity and Layout.timestamp are both {self.entity!r}; they must differ")
        if self.timestamp_unit is not None and self.timestamp_unit not in TIMESTAMP_UNITS:
            raise ConfigError(f"Layout.timestamp_unit must be one of {TIMESTAMP_UNITS}, got {self.timestamp_unit!r}")

    def to_dict(self) -> dict:
        """JSON-safe form (for artifacts and logs)."""
        return {
            "entity": self.entity,
            "timestamp": self.timestamp,
            "channels": None if self.channels is None else list(self.channels),
            "timestamp_unit": self.timestamp_unit,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        return from_mapping(cls, d, "layout")
