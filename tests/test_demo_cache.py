"""The demo's cache: a model or history from another plant or training configuration is never reused."""

from __future__ import annotations

import dataclasses

from stream_ae.commands import resolve_preset
from stream_ae.data.synthetic import generate_plant
from stream_ae.demo import cache_keys


def small_plant(seed: int):
    df, _ = generate_plant(n_entities=2, n_channels=3, n_rows=300, freq_s=10.0, seed=seed, clean_rows=200)
    return df


def test_the_cache_keys_follow_the_plant_and_the_training_configuration():
    preset = resolve_preset("conv", "undercomplete", epochs=6, max_windows=16_000)
    plant, model = cache_keys(small_plant(7), preset)
    assert cache_keys(small_plant(7), preset) == (plant, model)  # a rerun reuses both
    other_plant, other_model = cache_keys(small_plant(8), preset)  # another --seed: neither
    assert other_plant != plant and other_model != model
    longer = preset.replace(train=dataclasses.replace(preset.train, epochs=7))
    same_plant, longer_model = cache_keys(small_plant(7), longer)
    assert same_plant == plant and longer_model != model  # the same history, another model
    nudged = small_plant(7)
    nudged.iloc[5, nudged.columns.get_loc("ch_0")] += 1e-6  # one reading differs
    assert cache_keys(nudged, preset)[0] != plant
