"""Benchmarks that print figures (never timed assertions in the test suite)."""


def config_key(model, window, threshold) -> str:
    """What a cached benchmark model must match: the preset's whole configuration, so a changed
    preset is never measured with a model trained from the old one."""
    import json

    return json.dumps({"model": model.to_dict(), "window": window.to_dict(),
                       "threshold": threshold.to_dict()}, sort_keys=True)


def emit(result: dict, json_path=None) -> dict:
    """Print a benchmark's figures as JSON and, when asked, write them to ``json_path``."""
    import json
    from pathlib import Path

    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
    return result

