"""`stream-ae demo`: the main job end to end on a synthetic plant.

Generates a plant with injected anomalies, trains a model on its clean start if none
exists, detects over the rest, and prints what was found against what was injected.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

# 10 s readings; the plant's slow trend repeats every 20 seasons (20 h here), and the model
# trains on one whole cycle so that normal operation after it is familiar.
ENTITIES, CHANNELS, ROWS, CLEAN_ROWS, FREQ_S, SEASON = 4, 6, 12_000, 7_200, 10.0, 360


def demo_preset():
    """The demo's model: the conv preset, undercomplete, 6 epochs of up to 16 000 windows in
    batches of 256 (a few seconds on 2 cores)."""
    from stream_ae.commands import resolve_preset

    preset = resolve_preset("conv", "undercomplete", epochs=6, max_windows=16_000)
    return preset.replace(train=dataclasses.replace(preset.train, batch_size=256))


def prepare(out: Path, seed: int):
    """Write the synthetic history and train a model on its clean span, unless the history and a
    model made from this same plant and training configuration are already in ``out``.

    Both are cached under a key of what made them (the plant's readings, the training
    configuration): another ``--seed``, or a release whose plant or preset differ, trains
    afresh instead of scoring with a model of another plant."""
    from stream_ae.artifact import load_artifact, save_artifact
    from stream_ae.data.layout import Layout
    from stream_ae.data.synthetic import generate_plant, write_history
    from stream_ae.training import train

    out.mkdir(parents=True, exist_ok=True)
    df, injected = generate_plant(n_entities=ENTITIES, n_channels=CHANNELS, n_rows=ROWS, freq_s=FREQ_S,
                                  seed=seed, clean_rows=CLEAN_ROWS, season_period=SEASON)
    preset = demo_preset()
    plant, key = cache_keys(df, preset)
    history = out / "history"
    if _marker(history) != plant:
        shutil.rmtree(history, ignore_errors=True)
        write_history(df, history, partition_by=("date",))
        (history / MARKER).write_text(plant)
    train_end = int(df["timestamp"].sort_values().iloc[0].value + CLEAN_ROWS * FREQ_S * 1e9)
    models = out / "models" / key
    existing = sorted(p for p in models.glob("*/manifest.json")) if models.exists() else []
    if existing:
        artifact_path = existing[-1].parent
        print(f"using existing model {artifact_path} (same plant and training configuration)")
    else:
        print(f"training a conv autoencoder on the first {CLEAN_ROWS} readings of each entity ...")
        end = np.datetime64(train_end, "ns").astype(str)
        artifact = train(str(history), Layout(), preset.window, preset.model, preset.train,
                         preset.threshold, end=end)
        artifact_path = save_artifact(artifact, models)
        print(f"model saved: {artifact_path}")
    return df, injected, history, load_artifact(artifact_path), artifact_path, train_end


MARKER = ".plant"  # in the history folder: the key of the plant it was written from


def cache_keys(df, preset) -> tuple[str, str]:
    """``(plant, model)``: a digest of the plant's readings, and of those with the training
    configuration (what a cached model must match)."""
    import hashlib
    import json

    import pandas as pd

    plant = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()[:16]
    config = json.dumps(preset.to_dict(), sort_keys=True, default=str).encode()
    return plant, hashlib.sha256(plant.encode() + config).hexdigest()[:16]


def _marker(history: Path) -> str | None:
    try:
        return (history / MARKER).read_text().strip()
    except OSError:
        return None


def run_demo(out: Path, offline: bool = False, seed: int = 7) -> int:
    t0 = time.perf_counter()
    df, injected, history, artifact, artifact_path, train_end = prepare(out, seed)
    injected = [a for a in injected if a.start_ts >= train_end]
    if offline:
        from stream_ae.demo.offline import detect_offline

        frames, detections = detect_offline(out, history, artifact_path, df, train_end)
    else:
        from stream_ae.demo.streaming import detect_streaming

        frames, detections = detect_streaming(out, artifact, df, train_end)
    from stream_ae.demo.plot import plot_demo
    from stream_ae.demo.summary import ALERTS, match

    tolerance = int(artifact.window.length * FREQ_S * 1e9)   # a window holds a fault this long after it
    lead = int((ALERTS["n"] - 1) * artifact.window.hop * FREQ_S * 1e9)   # the k-of-n rule's first window
    summary = match(injected, detections, tolerance, lead)
    print()
    print("\n".join(summary.lines()))
    png = plot_demo(out / "demo.png", frames, injected, detections,
                    f"stream-ae demo: model {artifact.version}")
    print(f"plot: {png}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0
