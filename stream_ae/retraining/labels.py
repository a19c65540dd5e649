"""Labelled events (operator feedback) the retrain job judges models against on the holdout."""
from __future__ import annotations

import numpy as np
import pandas as pd

from stream_ae.errors import DataError
from stream_ae.retraining.compare import LabelledEvent

_TRUE, _FALSE = {"true", "yes", "1", "y", "t"}, {"false", "no", "0", "n", "f", ""}


def _is_true(value) -> bool:
    """An ``anomaly`` cell: a bool or number as itself; text as true/false, yes/no, 1/0 (a CSV's
    "no" was True as a non-empty string); a blank or null is no anomaly.

    >>> [_is_true(v) for v in (True, 0, "No", "yes", None, float("nan"), "")]
    [True, False, False, True, False, False, False]
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in _TRUE | _FALSE:
            raise DataError(f"labels: anomaly value {value!r} is not true/false, yes/no or 1/0")
        return text in _TRUE
    return bool(value)


def load_labels(uri: str, start: int, end: int) -> list[LabelledEvent]:
    """Labelled events / operator feedback (Parquet or CSV: ``entity``, ``start``, ``end``, optional
    ``anomaly`` bool — rows with False are ignored) overlapping ``[start, end)`` ns."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.dataset as ds

    as_text = pcsv.ConvertOptions(column_types={"entity": pa.string()})   # "0042" is an id, not 42
    try:
        table = (pcsv.read_csv(uri, convert_options=as_text) if str(uri).lower().endswith(".csv")
                 else ds.dataset(uri, format="parquet").to_table())
    except (OSError, ValueError) as exc:   # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"retrain.labels={uri!r} cannot be read as Parquet or CSV: {exc}") from None
    frame = table.to_pandas()
    missing = [c for c in ("entity", "start", "end") if c not in frame.columns]
    if missing:
        raise DataError(f"{uri}: labels need columns entity, start, end; missing {missing} "
                        f"(have {list(frame.columns)})")
    if "anomaly" in frame.columns:   # true/false, yes/no, 1/0 in any case; "no" is no anomaly, nor is a blank
        frame = frame[frame["anomaly"].map(_is_true)]
    numeric = [c for c in ("start", "end") if pd.api.types.is_numeric_dtype(frame[c])]
    if numeric:   # pandas reads a number as epoch nanoseconds: epoch seconds became January 1970
        raise DataError(f"{uri}: {' and '.join(numeric)} hold numbers; write times as ISO 8601 strings "
                        "(2026-01-01T01:00:00Z) or a timestamp column, so that their unit is not guessed")
    try:
        starts = pd.to_datetime(frame["start"], utc=True).to_numpy("datetime64[ns]").view(np.int64)
        ends = pd.to_datetime(frame["end"], utc=True).to_numpy("datetime64[ns]").view(np.int64)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{uri}: start/end must be times (ISO strings or timestamps): {exc}") from None
    return [LabelledEvent(str(e), int(s), int(t)) for e, s, t in zip(frame["entity"], starts, ends)
            if s < end and t >= start]
