"""Benchmarks that print figures (never timed assertions in the test suite)."""


def config_key(model, window, threshold) -> str:
    """What a cached benchmark model must match: the preset's whole configuration, so a changed
    preset is never measured with a model trained from the old one."""
    import json

    return json.dumps({"model": model.to_dict(), "window": window.to_dict(),
                       "threshold": threshold.to_dict()}, sort_keys=True)

