"""SKAB loader (on small hand-made files) and a quick check on the real data when present."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from stream_ae.errors import DataError
from stream_ae.evaluation.skab import TRAIN_ROWS, evaluate, fit_detector, run_file
from stream_ae.evaluation.skab_data import SKAB_CHANNELS, load_anomaly_free, load_skab, read_skab_csv, skab_files

SKAB_DIR = Path(__file__).parents[1] / ".." / "shared" / "data" / "skab"
HEADER = "datetime;" + ";".join(SKAB_CHANNELS)


def _write(path: Path, n: int = 5, labelled: bool = True, start_s: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER + (";anomaly;changepoint" if labelled else "")]
    for i in range(n):
        ts = f"2020-03-09 10:{(start_s + i) // 60:02d}:{(start_s + i) % 60:02d}"
        vals = ";".join(str(0.5 + c + 0.01 * i) for c in range(8))
        lab = f";{float(i >= 3)};{float(i == 3)}" if labelled else ""
        lines.append(f"{ts};{vals}{lab}")
    path.write_text("\n".join(lines) + "\n")


def test_loader_reads_files_in_fixed_order(tmp_path):
    for name in ("valve1/10", "valve1/2", "other/1", "valve2/0"):
        _write(tmp_path / f"{name}.csv")
    _write(tmp_path / "anomaly-free" / "anomaly-free.csv", labelled=False)
    assert [n for n, _ in skab_files(tmp_path)] == ["valve1/2", "valve1/10", "valve2/0", "other/1"]
    f = load_skab(tmp_path, ["valve1/2"])[0]
    assert f.values.shape == (5, 8) and f.values.dtype == np.float32
    assert f.anomaly.tolist() == [False, False, False, True, True]
    assert f.changepoint.sum() == 1 and np.all(np.diff(f.ts) == 10**9)
    free = load_anomaly_free(tmp_path)
    assert len(free) == 5 and not free.anomaly.any()


def test_loader_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_skab(tmp_path / "nope")
    with pytest.raises(DataError, match="no labelled SKAB files"):
        load_skab(tmp_path)
    bad = tmp_path / "valve1" / "0.csv"
    bad.parent.mkdir()
    bad.write_text("datetime,Current\n2020-01-01 00:00:00,1.0\n")   # comma-separated
    with pytest.raises(DataError, match="lacks column"):
        read_skab_csv(bad)
    _write(tmp_path / "valve1" / "1.csv")
    with pytest.raises(DataError, match="unknown SKAB file"):
        load_skab(tmp_path, ["valve1/99"])
    with pytest.raises(DataError, match="anomaly-free"):
        load_anomaly_free(tmp_path)


def _tiny_preset():
    from stream_ae.presets import PRESETS

    p = PRESETS["conv"]
    return p.replace(model=dataclasses.replace(p.model, hidden=8, latent=4),
                     train=dataclasses.replace(p.train, epochs=8))


skab = pytest.mark.skipif(not (SKAB_DIR / "valve1").is_dir(),
                          reason=f"SKAB data not found at {SKAB_DIR.resolve()}")


@pytest.mark.skab
@skab
def test_quick_skab_protocol_a_beats_chance():
    names = ["valve1/1", "other/14"]
    res = evaluate(SKAB_DIR, ["conv"], ["undercomplete"], ["A"], files=names, progress=False,
                   presets={"conv": _tiny_preset()})["conv"]["undercomplete"]["A"]
    for key in ("f1", "far", "mar"):
        assert 0.0 <= res[key] <= 1.0
    assert set(res["nab"]) == {"standard", "low_fp", "low_fn"}
    scores, labels = [], []
    for run in res["runs"]:
        assert np.isfinite(run.score[run.test]).all()     # every test point has a window score
        scores.append(run.score[run.test])
        labels.append(run.anomaly[run.test])
    s, y = np.concatenate(scores), np.concatenate(labels)
    # rank AUC of the score against the labels: 0.5 is chance
    ranks = s.argsort().argsort()
    auc = (ranks[y].mean() - (y.sum() - 1) / 2) / (~y).sum()
    assert auc > 0.7
    assert res["mar"] < 0.5 and res["f1"] > 0.5


@pytest.mark.skab
@skab
def test_bf16_scoring_keeps_the_fp32_calibration():
    """``--precision bf16``: the threshold is calibrated on fp32 scores, as ``train`` does; the
    detector then scores in bf16, close to fp32."""
    from stream_ae.scoring import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    f = load_skab(SKAB_DIR, ["valve1/1"])[0]
    fp32 = fit_detector(f.head(TRAIN_ROWS), _tiny_preset(), seed=0)
    bf16 = fit_detector(f.head(TRAIN_ROWS), _tiny_preset(), seed=0, precision="bf16")
    assert bf16.threshold_state == fp32.threshold_state
    np.testing.assert_array_equal(bf16.val_scores, fp32.val_scores)
    a = run_file(fp32, f, _tiny_preset(), test_from=TRAIN_ROWS).score[TRAIN_ROWS:]
    b = run_file(bf16, f, _tiny_preset(), test_from=TRAIN_ROWS).score[TRAIN_ROWS:]
    assert not np.array_equal(a, b)  # it did score in bf16
    np.testing.assert_allclose(b, a, rtol=0.05, atol=1e-3)


@pytest.mark.skab
@skab
def test_decisions_are_causal():
    f = load_skab(SKAB_DIR, ["valve1/1"])[0]
    preset = _tiny_preset()
    det = fit_detector(f.head(TRAIN_ROWS), preset)
    full = run_file(det, f, preset, test_from=TRAIN_ROWS)
    cut = 750
    prefix = run_file(det, f.head(cut), preset, test_from=TRAIN_ROWS)
    # what the detector decided up to row 750 cannot depend on the rows after it
    assert np.array_equal(full.alert[:cut], prefix.alert)
    assert np.allclose(full.score[:cut], prefix.score, equal_nan=True)
    assert not full.alert[:TRAIN_ROWS].any()              # the training slice is never judged
