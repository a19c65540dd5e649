"""The archiver: the readings topic -> the hive-partitioned Parquet history training reads.

``job.py`` is the Kafka side (consumer group, dead letters, commits), ``core.py`` the work
(decode, check, buffer, roll), ``writer.py`` the files (atomic Parquet, markers).
"""
from stream_ae.archiver.core import ArchiveCore, Outcome
from stream_ae.archiver.job import ArchiveReport, Archiver, run_archiver
from stream_ae.archiver.writer import ArchiveWriter, PartitionState

__all__ = ["ArchiveCore", "ArchiveReport", "ArchiveWriter", "Archiver", "Outcome", "PartitionState", "run_archiver"]
