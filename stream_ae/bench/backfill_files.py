"""Backfill benchmark over an archive of one file per entity (``entity=<id>/part-0.parquet``),
the layout where each input file is small and the checkpoint holds many entities.

Runs the same backfill twice, saving the checkpoint after every file (``checkpoint_every_s=0``,
what every run did before the interval existed) and at the default interval, and prints the
windows/s, the saves and the seconds they took for each. The model is the backfill bench's.

Run it with ``stream-ae bench backfill --entities 300``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from stream_ae.bench import emit
from stream_ae.bench.backfill import CHANNELS, TORCH_THREADS, ensure_archive, ensure_artifact

ROWS_PER_ENTITY = 2880        # two days at one reading a minute


def ensure_entity_archive(out_dir: Path, entities: int) -> Path:
    """A synthetic plant of ``entities`` entities, one Parquet file each, cached."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from stream_ae.data.synthetic import write_synthetic_archive

    root, done = out_dir / f"by-entity-{entities}", out_dir / f"by-entity-{entities}.done"
    if done.exists():
        return root
    flat = out_dir / f"by-entity-{entities}.flat"
    for path in (root, flat):
        shutil.rmtree(path, ignore_errors=True)
    write_synthetic_archive(flat, entities * ROWS_PER_ENTITY, n_entities=entities, n_channels=CHANNELS, freq_s=60)
    table = ds.dataset(flat, partitioning="hive").to_table().drop(["date"])
    table = table.set_column(0, "entity", table["entity"].cast(pa.string()))
    table = table.sort_by([("entity", "ascending"), ("timestamp", "ascending")])
    ds.write_dataset(table, root, format="parquet", preserve_order=True,
                     partitioning=ds.partitioning(pa.schema([("entity", pa.string())]), flavor="hive"))
    shutil.rmtree(flat)
    done.write_text("ok")
    return root


def run_files_bench(entities: int = 300, out_dir="bench-out", json_path=None) -> dict:
    """Print and return the figures of the two runs as JSON."""
    import torch

    from stream_ae.backfill import run_backfill
    from stream_ae.backfill.runner import DEFAULT_CHECKPOINT_EVERY_S

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact, source = ensure_artifact(out_dir, ensure_archive(out_dir, 1_000_000))
    archive = ensure_entity_archive(out_dir, entities)
    torch.set_num_threads(TORCH_THREADS)
    runs = {}
    for name, every in (("after_every_file", 0.0), ("default_interval", DEFAULT_CHECKPOINT_EVERY_S)):
        r = run_backfill(str(archive), str(artifact), str(out_dir / "scores-by-entity"), device="cpu",
                         progress=False, restart=True, checkpoint_every_s=every)
        runs[name] = {"checkpoint_every_s": every, "seconds": r.seconds, "windows": r.windows_scored,
                      "windows_per_s": r.windows_per_s, "checkpoints_saved": r.checkpoints_saved,
                      "checkpoint_seconds": r.checkpoint_seconds,
                      "checkpoint_share": round(r.checkpoint_seconds / max(r.seconds, 1e-9), 3)}
    return emit({"bench": "backfill_one_file_per_entity", "entities": entities, "files": entities,
                 "rows_per_entity": ROWS_PER_ENTITY, "channels": CHANNELS, "torch_threads": TORCH_THREADS,
                 "model": source, "runs": runs,
                 "speedup": round(runs["default_interval"]["windows_per_s"]
                                  / max(runs["after_every_file"]["windows_per_s"], 1e-9), 2)}, json_path)
