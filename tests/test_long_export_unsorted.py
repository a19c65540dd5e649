"""A long export grouped by tag (``df.melt``) is out of time order within each entity: the
error says to write it wide, not only to sort it (session 36's new-user review: sorting it
first, then being told it is a long export, sent the user the wrong way)."""
import numpy as np
import pandas as pd

from stream_ae.cli import main


def test_a_long_export_grouped_by_tag_is_told_to_pivot(tmp_path, capsys):
    t = pd.date_range("2026-01-01", periods=600, freq="s", tz="UTC")
    wide = pd.DataFrame({"entity": "unit_0", "timestamp": t, **{f"ch_{i}": np.sin(np.arange(600) / (5 + i))
                                                                for i in range(3)}})
    long = wide.melt(id_vars=["entity", "timestamp"], var_name="tag", value_name="value")   # grouped by tag
    (tmp_path / "h").mkdir()
    long.to_parquet(tmp_path / "h" / "part-0.parquet", index=False)
    code = main(["train", "--history", str(tmp_path / "h"), "--out", str(tmp_path / "m"), "--model", "lstm",
                 "--channels", "value", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "older than an earlier one" in err and "pivot_table" in err


def test_a_few_late_rows_are_only_told_to_sort(tmp_path, capsys):
    t = pd.date_range("2026-01-01", periods=600, freq="s", tz="UTC")
    df = pd.DataFrame({"entity": "unit_0", "timestamp": t, "ch_0": np.sin(np.arange(600) / 5)})
    df = pd.concat([df.iloc[:300], df.iloc[[10]], df.iloc[300:]])   # one reading out of place
    (tmp_path / "h").mkdir()
    df.to_parquet(tmp_path / "h" / "part-0.parquet", index=False)
    code = main(["train", "--history", str(tmp_path / "h"), "--out", str(tmp_path / "m"), "--model", "lstm",
                 "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "older than an earlier one" in err and "pivot_table" not in err
