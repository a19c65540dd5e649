"""``stream-ae train --out`` with a URI writes through the registry's filesystem.

Before: ``--out file:///tmp/models`` created a local folder named ``file:`` in the working
directory (an ``s3://`` one stayed on local disk), and ``stream-ae models --registry
file:///tmp/models list`` then found nothing."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from stream_ae.cli import main


def test_a_file_uri_out_is_the_registry_the_models_command_lists(tmp_path, monkeypatch, capsys):
    n = 1500
    rng = np.random.default_rng(0)
    ts = pd.date_range("2026-01-01", periods=n, freq="10s", tz="UTC")
    pd.DataFrame({"entity": "u1", "timestamp": ts, "a": rng.normal(size=n), "b": rng.normal(size=n)}) \
        .to_parquet(tmp_path / "h.parquet", index=False)
    monkeypatch.chdir(tmp_path)
    uri = f"file://{tmp_path / 'models'}"
    assert main(["train", "--history", str(tmp_path / "h.parquet"), "--model", "conv", "--window", "16",
                 "--epochs", "1", "--max-windows", "2000", "--no-progress", "--device", "cpu", "--out", uri]) == 0
    out = capsys.readouterr().out
    assert f"model saved: {uri}/conv-" in out and "channels (2): a, b" in out
    assert not os.path.exists(tmp_path / "file:")
    assert main(["models", "--registry", uri, "list"]) == 0
    assert "conv-" in capsys.readouterr().out
