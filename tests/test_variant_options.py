"""The variant options reach a model from every place a user sets them (train flags, [retrain]),
an option for another variant is refused, the contractive term does not scale with the window,
and training-time details (dropout, threads, late checks) stay out of scoring and reproducibility."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stream_ae.artifact import load_artifact
from stream_ae.commands import resolve_preset
from stream_ae.data import History, WindowSpec, generate_plant, write_history
from stream_ae.errors import ConfigError
from stream_ae.models import ModelConfig, build_model
from stream_ae.models.variants import training_loss
from stream_ae.registry import Registry
from stream_ae.retraining import run_retrain
from stream_ae.stream.settings import load_settings
from stream_ae.thresholds import ThresholdSpec
from stream_ae.training import TrainConfig, fit_autoencoder, train
from stream_ae.variant_options import OPTIONS
from test_retrain import POOR, make_settings, plant  # noqa: F401  (plant: a fixture)
from test_training import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_history(tmp_path_factory):
    df, _ = generate_plant(n_entities=1, n_channels=3, n_rows=2000, anomalies=False, seed=5)
    return write_history(df, tmp_path_factory.mktemp("h") / "plant")


def _train_flags(history, out, *extra):
    return ["train", "--history", str(history), "--out", str(out), "--model", "lstm", "--epochs", "1",
            "--max-windows", "1000", "--device", "cpu", "--no-progress", *extra]


# ---- stream-ae train ----------------------------------------------------------------------------

def test_train_flags_set_the_variant_options_of_the_saved_model(small_history, tmp_path):
    from stream_ae.cli import main

    assert main(_train_flags(small_history, tmp_path, "--variant", "sparse", "--sparsity", "kl",
                             "--sparsity-weight", "0.02", "--sparsity-target", "0.1")) == 0
    artifact = load_artifact(next(tmp_path.iterdir()))
    model, metrics = artifact.model, artifact.training["metrics"]
    assert (model.variant, model.sparsity, model.sparsity_weight, model.sparsity_target) == ("sparse", "kl", 0.02, 0.1)
    assert model.noise_std == ModelConfig().noise_std   # options not given keep the defaults
    assert 0 < metrics["train_recon"] < metrics["train_loss"]   # the objective's reconstruction part, then the penalty


@pytest.mark.parametrize("extra, says", [
    (["--variant", "sparse", "--noise-std", "0.3"],
     "--noise-std is read by the denoising variant only, not by sparse; drop it or choose --variant denoising"),
    (["--contractive-weight", "1"], "--contractive-weight is read by the contractive variant only, not by undercomplete"),
    (["--variant", "sparse", "--sparsity-target", "0.1"], "--sparsity-target is the target of kl sparsity; add --sparsity kl"),
])
def test_an_option_the_variant_does_not_read_is_refused_before_reading(tmp_path, capsys, extra, says):
    from stream_ae.cli import main

    assert main(_train_flags(tmp_path / "no-such-history", tmp_path / "m", *extra)) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, says", [
    ("--epochs", "0", "argument --epochs: must be an integer >= 1, got '0'"),
    ("--hop", "0", "argument --hop: must be an integer >= 1, got '0'"),
    ("--max-gap", "-1", "argument --max-gap: must be a number in (0, inf), got '-1'"),
    ("--noise-std", "nan", "argument --noise-std: must be a number in [0, inf), got 'nan'"),
    ("--sparsity-target", "1", "argument --sparsity-target: must be a number in (0, 1), got '1'"),
])
def test_a_bad_training_flag_is_named_as_the_flag(capsys, flag, value, says):
    """Before: 'TrainConfig.epochs must be >= 1', 'WindowSpec.hop must be ...' (Python names)."""
    from stream_ae.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["train", "--history", "h", "--model", "conv", flag, value])
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_detrend_on_too_short_a_window_is_refused_before_the_history_is_read(tmp_path, monkeypatch):
    import stream_ae.training.trainer as trainer

    with pytest.raises(ConfigError, match="detrend needs windows of at least 3 readings, got 2"):
        resolve_preset("lstm", "undercomplete", window=2, detrend=("ch_0",))
    df, _ = generate_plant(n_entities=1, n_channels=2, n_rows=50, anomalies=False, seed=1)
    history = History.open(write_history(df, tmp_path / "h"))
    monkeypatch.setattr(trainer, "sample_windows", lambda *a, **k: pytest.fail("read the history first"))
    with pytest.raises(ConfigError, match="detrend needs windows of at least 3"):
        train(history, history.layout, WindowSpec(length=2, hop=1), dataclasses.replace(TINY, kind="lstm"),
              TrainConfig(device="cpu", progress=False), ThresholdSpec(), detrend=("ch_0",))


# ---- [retrain] ----------------------------------------------------------------------------------

def test_retrain_settings_take_the_variant_options_and_refuse_another_variants():
    s = load_settings(env={}, overrides=["retrain.variant=variational", "retrain.kl_weight=0.01"])
    assert s.retrain.variant_options() == {"kl_weight": 0.01}
    with pytest.raises(ConfigError, match=r"retrain.noise_std is read by the denoising variant only, not by "
                                          r"undercomplete; drop it or choose retrain.variant denoising"):
        load_settings(env={}, overrides=["retrain.noise_std=0.3"])
    with pytest.raises(ConfigError, match=r"retrain.kl_weight"):
        load_settings(env={}, overrides=["retrain.variant=variational", "retrain.kl_weight=-1"])


def test_the_challenger_is_trained_with_the_settings_variant_options(tmp_path, plant):  # noqa: F811
    report = run_retrain(make_settings(tmp_path, plant, *POOR, "retrain.variant=denoising",
                                       "retrain.noise_std=0.05"), now=plant["now"])
    assert report.challenger and report.challenger["version"], report.reasons
    model = load_artifact(Registry(tmp_path / "models").artifact_path(report.challenger["version"])).model
    assert (model.variant, model.noise_std) == ("denoising", 0.05)
    assert report.preset["model"]["noise_std"] == 0.05     # in the report, and so in the run's fingerprint


# ---- the contractive term -----------------------------------------------------------------------

def _exact_contractive(model, x):
    """mean_b ||d code_b / d x_b||_F^2 / K, by the full Jacobian of each window."""
    total = 0.0
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda w: model.encode(w[None])[0][0], x[b])
        code_units = jac.shape[:-2].numel()
        total += float(jac.square().sum()) / code_units
    return total / x.shape[0]


@pytest.mark.parametrize("kind", ["conv", "lstm"])
def test_the_contractive_term_is_the_mean_squared_gradient_per_code_unit(kind):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, variant="contractive", n_channels=2, window=16, hidden=8,
                                    latent=4, contractive_weight=1.0)).eval()
    x = torch.randn(3, 16, 2)
    probes = [training_loss(model, x)[1]["contractive"] for _ in range(400)]  # Hutchinson: unbiased
    exact = _exact_contractive(model, x)
    assert np.mean(probes) == pytest.approx(exact, rel=0.1)


def test_the_contractive_term_does_not_grow_with_the_window():
    """Summed over code units, a conv's term grew with the window (x4 from T=60 to 240)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="contractive", n_channels=3, window=60)).eval()
    g = torch.Generator().manual_seed(1)
    terms = {}
    for length in (60, 240):
        x = torch.randn(64, length, 3, generator=g)
        terms[length] = np.mean([training_loss(model, x)[1]["contractive"] for _ in range(8)])
    assert terms[240] / terms[60] == pytest.approx(1.0, abs=0.15)


# ---- scoring and reproducibility ----------------------------------------------------------------

def test_errors_score_without_dropout_whatever_mode_the_model_is_in():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_channels=3, window=24, dropout=0.5))   # training mode, fresh
    x = torch.randn(4, 24, 3)
    first, again = model.errors(x)[0], model.errors(x)[0]
    assert torch.equal(first, again) and model.training          # no dropout; its mode kept
    assert torch.equal(first, model.eval().errors(x)[0])


def test_fit_autoencoder_trains_on_the_configured_threads(monkeypatch):
    seen = set()
    model = build_model(ModelConfig(n_channels=3, window=24, hidden=8, latent=4))
    loss = model.training_loss
    monkeypatch.setattr(model, "training_loss", lambda x: (seen.add(torch.get_num_threads()), loss(x))[1])
    w = np.random.default_rng(0).normal(size=(64, 24, 3)).astype(np.float32)
    torch.set_num_threads(2)
    fit_autoencoder(model, w, w, TrainConfig(epochs=1, batch_size=32, num_threads=1, device="cpu", progress=False))
    assert seen == {1} and torch.get_num_threads() == 2


# ---- stream-ae evaluate skab --------------------------------------------------------------------

def test_evaluate_gives_each_variant_its_own_options_and_refuses_one_no_variant_reads(tmp_path, monkeypatch, capsys):
    import stream_ae.evaluation.skab as skab
    from stream_ae.cli import build_parser
    from test_skab_cli_checks import _args

    seen = {}

    def fake_protocol(protocol, data, preset, *rest):
        seen[preset.model.variant] = preset.model
        return {"f1": 0.5, "far": 0.1, "mar": 0.2, "nab": {"standard": 1.0, "low_fp": 1.0, "low_fn": 1.0}}, []
    monkeypatch.setattr(skab, "run_protocol", fake_protocol)
    monkeypatch.setattr(skab, "load_skab", lambda *a, **k: [])
    flags = vars(build_parser().parse_args(["evaluate", "skab", "--noise-std", "0.3", "--kl-weight", "0.01"]))
    options = {k: flags[k] for k in OPTIONS}
    skab.run_skab_cli(_args(tmp_path, variant="undercomplete,denoising,variational", protocol="published", **options))
    assert seen["denoising"].noise_std == 0.3 and seen["variational"].kl_weight == 0.01
    assert seen["undercomplete"] == dataclasses.replace(seen["denoising"], variant="undercomplete", noise_std=0.2)
    with pytest.raises(ConfigError, match="--noise-std is read by the denoising variant, which this run does not "
                                          "include; drop it or add denoising to --variant"):
        skab.run_skab_cli(_args(tmp_path, variant="undercomplete", **options))
