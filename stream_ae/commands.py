"""Sub-command bodies that compose several modules (kept out of the argument parser)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from stream_ae.errors import ConfigError
from stream_ae.redaction import mask_uri


def resolve_preset(model: str, variant: str, *, window=None, hop=None, max_gap=None, epochs=None,
                   max_windows=None, threshold=None, seed=None, device=None, progress=None,
                   detrend=None, score_steps=None, variant_options=None, spell=None):
    """The named preset for `model` with `variant` and any explicit overrides applied.

    ``variant_options``: the variant's hyperparameters (``noise_std``, ``sparsity``, ...; None
    keeps the preset's), each checked to be read by ``variant``; ``spell`` names them in errors
    as the caller's user wrote them (a flag, a setting)."""
    from stream_ae.presets import PRESETS
    from stream_ae.variant_options import given

    if model not in PRESETS:
        raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(sorted(PRESETS))}")
    preset = PRESETS[model].with_variant(variant)
    win = preset.window
    if window is not None or hop is not None or max_gap is not None:
        win = dataclasses.replace(win, length=win.length if window is None else window,
                                  hop=win.hop if hop is None else hop,
                                  max_gap_s=max_gap if max_gap is not None else win.max_gap_s)
    steps = preset.model.score_steps if score_steps is None else score_steps
    if window is not None and score_steps is None:
        steps = min(steps, win.length)  # a shorter window than the preset's: score at most all of it
    options = given(variant, variant_options or {}, spell)
    if detrend and win.length < 3:   # said now, not after reading the history
        raise ConfigError(f"detrend needs windows of at least 3 readings, got {win.length}")
    model_cfg = dataclasses.replace(preset.model, window=win.length, score_steps=steps, **options)
    changes = {k: v for k, v in dict(epochs=epochs, max_windows=max_windows, seed=seed,
                                      device=device, progress=progress).items() if v is not None}
    train_cfg = dataclasses.replace(preset.train, **changes)
    thr = preset.threshold if threshold is None else dataclasses.replace(preset.threshold, kind=threshold)
    out = dataclasses.replace(preset, model=model_cfg, window=win, train=train_cfg, threshold=thr)
    return out if detrend is None else dataclasses.replace(out, detrend=tuple(detrend))


def train_command(args, layout):
    """`stream-ae train`: preset + overrides -> trained artifact saved under args.out;
    returns (its path, the artifact)."""
    from stream_ae.artifact import save_artifact
    from stream_ae.cli_flags import variant_flag
    from stream_ae.training import train
    from stream_ae.variant_options import OPTIONS

    out = Path(args.out)
    if "://" in str(args.out):   # a registry on an object store (or file://): written through its filesystem
        from stream_ae.registry import Registry

        registry = Registry(args.out)   # checked before training: a URI pyarrow cannot open stops here
    elif out.exists() and not out.is_dir():   # checked before training, not after it
        raise ConfigError(f"--out {out} is a file; give a folder for the model versions (e.g. models)")
    preset = resolve_preset(args.model, args.variant, window=args.window, hop=args.hop,
                            max_gap=args.max_gap, epochs=args.epochs, max_windows=args.max_windows,
                            threshold=args.threshold, seed=args.seed, device=args.device,
                            progress=not args.no_progress, detrend=args.detrend,
                            score_steps=args.score_steps, spell=variant_flag,
                            variant_options={k: getattr(args, k) for k in OPTIONS})
    artifact = train(args.history, layout, preset.window, preset.model, preset.train,
                     preset.threshold, start=args.start, end=args.end, detrend=preset.detrend)
    if "://" in str(args.out):
        return f"{mask_uri(str(args.out)).rstrip('/')}/{registry.publish(artifact)}", artifact
    return save_artifact(artifact, args.out), artifact
