"""A rollback, recorded as a promotion, checks that the version it goes back to loads, as a
promotion does. Before, a rollback to a version whose weights were damaged succeeded: the
registry said it served that version while every consumer refused to load it and kept the
one the operator meant to leave."""

from __future__ import annotations

import pytest

from stream_ae.errors import ArtifactError
from test_registry_guards import registry  # noqa: F401


def test_a_rollback_to_a_version_that_does_not_load_is_refused_and_changes_nothing(registry):  # noqa: F811
    reg, (v1, v2) = registry
    reg.promote("prod", v1)
    reg.promote("prod", v2)
    weights = [p for p in reg.artifact_path(v1).iterdir() if p.suffix == ".safetensors"]
    assert weights, list(reg.artifact_path(v1).iterdir())
    weights[0].write_bytes(weights[0].read_bytes()[:-8] + b"damaged!")
    with pytest.raises(ArtifactError, match=f"version {v1} cannot be used"):
        reg.rollback("prod")
    assert reg.pointer("prod")["version"] == v2
    assert [h["version"] for h in reg.history("prod")] == [v1, v2]
