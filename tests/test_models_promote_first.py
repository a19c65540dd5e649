"""`models promote` of a deployment's first version says so, not "(was None)" (session 36's
new-user review)."""
from stream_ae.cli import main
from stream_ae.registry import Registry
from test_registry import tiny_artifact


def test_the_first_promotion_says_first_and_the_next_names_the_one_before(tmp_path, capsys):
    reg = Registry(tmp_path / "models")
    v1, v2 = reg.publish(tiny_artifact(0)), reg.publish(tiny_artifact(1))
    args = ["--registry", str(reg.root), "--deployment", "prod"]
    assert main(["models", "promote", v1, *args]) == 0
    assert capsys.readouterr().out.strip() == f"prod -> {v1} (its first version)"
    assert main(["models", "promote", v2, *args]) == 0
    assert capsys.readouterr().out.strip() == f"prod -> {v2} (was {v1})"


def test_an_empty_registry_names_the_registries_one_level_down(tmp_path, capsys):
    """The demo keeps a registry per plant digest (demo-out/models/<digest>): `models list` on
    demo-out/models found nothing and said no more."""
    inner = Registry(tmp_path / "models" / "54fb668fd1a0a11a")
    inner.publish(tiny_artifact(0))
    main(["models", "--registry", str(tmp_path / "models"), "list"])
    out = capsys.readouterr().out
    assert "no model versions" in out and f"{inner.root} (pass one as --registry)" in out
