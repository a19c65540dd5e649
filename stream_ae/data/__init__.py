"""Data edge and windowing: Parquet history, per-entity windows, the synthetic plant."""

from stream_ae.data.history import Fragment, History, Rows, to_ns
from stream_ae.data.layout import Layout
from stream_ae.data.synthetic import (
    ANOMALY_KINDS,
    InjectedAnomaly,
    generate_plant,
    write_history,
    write_synthetic_archive,
)
from stream_ae.data.windows import SeriesWindower, WindowBatch, WindowSpec, sliding_windows

__all__ = [
    "ANOMALY_KINDS", "Fragment", "History", "InjectedAnomaly", "Layout", "Rows", "SeriesWindower",
    "WindowBatch", "WindowSpec", "generate_plant", "sliding_windows", "to_ns", "write_history",
    "write_synthetic_archive",
]
