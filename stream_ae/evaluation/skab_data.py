"""SKAB's files: the labelled experiments and the anomaly-free run, read and checked.

The data stays where the user keeps it (``--data``); nothing here copies it. A file that is
not what SKAB publishes (``;``-separated, a ``datetime`` column, the eight sensor channels,
0/1 labels) stops with a DataError that says what is odd.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stream_ae.errors import DataError

SKAB_CHANNELS = (
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
    "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS",
)
LABELLED_GROUPS = ("valve1", "valve2", "other")


@dataclass(frozen=True)
class SkabFile:
    """One SKAB experiment, decoded: ``name`` like ``"valve1/0"``."""

    name: str
    ts: np.ndarray  # (N,) int64 ns since epoch (the file's naive datetimes read as UTC)
    values: np.ndarray  # (N, 8) float32 in SKAB_CHANNELS order
    anomaly: np.ndarray  # (N,) bool
    changepoint: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.ts)

    def head(self, n: int) -> "SkabFile":
        """The first ``n`` rows."""
        return dataclasses.replace(self, ts=self.ts[:n], values=self.values[:n],
                                   anomaly=self.anomaly[:n], changepoint=self.changepoint[:n])


def read_skab_csv(path: str | Path, name: str | None = None, labelled: bool = True) -> SkabFile:
    """Read one SKAB csv (``;``-separated) into a :class:`SkabFile`; DataError says what is odd."""
    path = Path(path)
    try:
        df = pd.read_csv(path, sep=";")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read SKAB file {path}: {exc}") from exc
    need = ["datetime", *SKAB_CHANNELS] + (["anomaly", "changepoint"] if labelled else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"SKAB file {path} lacks column(s) {missing}; found {list(df.columns)}. "
                        "Is this a SKAB csv with ';' as separator?")
    try:
        ts = pd.to_datetime(df["datetime"]).to_numpy("datetime64[ns]").view(np.int64)
        values = df[list(SKAB_CHANNELS)].to_numpy(np.float32)
        labels = {c: df[c].to_numpy(np.float64) for c in ("anomaly", "changepoint") if c in df}
    except (ValueError, TypeError) as exc:
        raise DataError(f"SKAB file {path} has a non-numeric value or a bad datetime: {exc}") from exc
    for col, lab in labels.items():
        if not np.isin(lab, (0.0, 1.0)).all():
            raise DataError(f"SKAB file {path}: column {col!r} must hold only 0/1")
    if len(ts) == 0 or not np.all(np.diff(ts) > 0):
        raise DataError(f"SKAB file {path} is empty or its datetimes are not strictly increasing")
    zeros = np.zeros(len(ts), bool)
    return SkabFile(
        name=name or path.stem, ts=ts, values=values,
        anomaly=labels["anomaly"].astype(bool) if "anomaly" in labels else zeros,
        changepoint=labels["changepoint"].astype(bool) if "changepoint" in labels else zeros,
    )


def _check_dir(data_dir: str | Path) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"SKAB folder {root} does not exist; pass --data pointing at the folder that "
                        "holds valve1/, valve2/, other/ and anomaly-free/")
    return root


def skab_files(data_dir: str | Path) -> list[tuple[str, Path]]:
    """``(name, path)`` of the labelled files in a fixed order: valve1, valve2, other, by number."""
    root = _check_dir(data_dir)
    found = []
    for group in LABELLED_GROUPS:
        paths = list((root / group).glob("*.csv"))
        numbered = [p for p in paths if re.fullmatch(r"\d+", p.stem)]
        found += [(f"{group}/{p.stem}", p) for p in sorted(numbered, key=lambda p: int(p.stem))]
    if not found:
        raise DataError(f"no labelled SKAB files under {root} (expected valve1/*.csv, valve2/*.csv, "
                        "other/*.csv); is --data the SKAB data folder?")
    return found


def load_skab(data_dir: str | Path, names: list[str] | None = None) -> list[SkabFile]:
    """Read the labelled files (all 34, or those in ``names`` like ``["valve1/0"]``)."""
    available = dict(skab_files(data_dir))
    if names is not None:
        unknown = [n for n in names if n not in available]
        if unknown:
            raise DataError(f"unknown SKAB file(s) {unknown}; available: {', '.join(available)}")
        available = {n: available[n] for n in names}
    return [read_skab_csv(p, name=n) for n, p in available.items()]


def load_anomaly_free(data_dir: str | Path) -> SkabFile:
    """Read ``anomaly-free/anomaly-free.csv`` (protocol B's training data)."""
    path = _check_dir(data_dir) / "anomaly-free" / "anomaly-free.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing; protocol B trains on it (use protocol A without it)")
    return read_skab_csv(path, name="anomaly-free", labelled=False)
