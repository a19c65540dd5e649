"""Backfill: score a Parquet archive into a scores dataset partitioned like it.

``run_backfill(archive, artifact_path, out, shard=(i, n), ...) -> BackfillReport`` reads in
bounded memory, writes atomic parts, checkpoints every 30 s of work (exact resume) and
splits the work over independent workers by entity (``shard``).
"""
from stream_ae.backfill.output import SCORES_SCHEMA
from stream_ae.backfill.runner import BackfillReport, parse_shard, run_backfill, shard_of

__all__ = ["BackfillReport", "SCORES_SCHEMA", "parse_shard", "run_backfill", "shard_of"]
