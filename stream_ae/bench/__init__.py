"""Benchmarks that print figures (never timed assertions in the test suite)."""


def config_key(model, window, threshold, detrend: tuple[str, ...] = ()) -> str:
    """What a cached benchmark model must match: the preset's whole configuration, so a changed
    preset is never measured with a model trained from the old one."""
    import json

    return json.dumps({"model": model.to_dict(), "window": window.to_dict(),
                       "threshold": threshold.to_dict(), "detrend": list(detrend)}, sort_keys=True)


def skab_detrend(channels) -> tuple[str, ...]:
    """The channels a benchmark detrends so that it measures the configuration that meets the
    SKAB target: SKAB's configuration detrends Temperature and Thermocouple, its 5th and 6th of
    8 channels; a benchmark's 8 synthetic channels are detrended at the same positions.

    >>> skab_detrend([f"ch_{i}" for i in range(8)])
    ('ch_4', 'ch_5')
    """
    from stream_ae.evaluation.skab_data import SKAB_CHANNELS
    from stream_ae.presets import SKAB_DETREND

    if len(channels) != len(SKAB_CHANNELS):
        raise ValueError(f"SKAB's configuration is for {len(SKAB_CHANNELS)} channels, got {len(channels)}")
    return tuple(channels[SKAB_CHANNELS.index(name)] for name in SKAB_DETREND)


def emit(result: dict, json_path=None) -> dict:
    """Print a benchmark's figures as JSON and, when asked, write them to ``json_path``."""
    from pathlib import Path

    from stream_ae.jsontext import dumps

    text = dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
    return result

