"""The archiver: the readings topic -> the hive-partitioned Parquet history training reads."""
from stream_ae.archiver.job import ArchiveReport, Archiver, run_archiver
from stream_ae.archiver.writer import ArchiveWriter, PartitionState

__all__ = ["ArchiveReport", "ArchiveWriter", "Archiver", "PartitionState", "run_archiver"]
