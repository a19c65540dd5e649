"""Backfill checkpoints: what a re-run needs to resume exactly where a killed run stopped.

One JSON file per shard, ``<out>/_checkpoints/shard-<i>-of-<n>.json``, rewritten
atomically (see :class:`Saver` for when). It holds the completed fragments, every
entity's windower and threshold state, the counters, and the identity of the run
(artifact version, archive fingerprint, arguments) so that a checkpoint is never
applied to a different run.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pyarrow.fs as pafs

from stream_ae.backfill.output import relative_dir, write_bytes_atomic
from stream_ae.errors import ArtifactError, ConfigError

FORMAT_VERSION = 1
#: 2: no ``entity=`` folder in the output (see :func:`stream_ae.backfill.output.output_dir`).
OUTPUT_LAYOUT = 2
CHECKPOINT_DIR = "_checkpoints"


def checkpoint_path(out_root: str, shard: tuple[int, int]) -> str:
    """Where shard ``(i, n)`` keeps its checkpoint.

    Examples
    --------
    >>> checkpoint_path("/data/scores", (1, 3))
    '/data/scores/_checkpoints/shard-1-of-3.json'
    """
    i, n = shard
    return posixpath.join(out_root, CHECKPOINT_DIR, f"shard-{i}-of-{n}.json")


#: Arguments added after checkpoints were first written: an older checkpoint ran with these.
ARG_DEFAULTS = {"precision": "fp32"}
#: Arguments older checkpoints hold that do not change a score (rows per record batch read).
IGNORED_ARGS = {"batch_rows"}


@dataclass
class Counters:
    """Running totals of one shard, carried over resumes."""

    rows_read: int = 0
    windows_scored: int = 0
    anomalies: int = 0
    duplicates_dropped: int = 0
    # the channels that had a value (neither NaN nor null) in a row read; None in a checkpoint
    # written before it was counted (the check it feeds is then skipped)
    channels_seen: list[str] | None = field(default_factory=list)
    # the entities that had a window scored; None in a checkpoint written before they were kept
    windowed: list[str] | None = field(default_factory=list)

    def __post_init__(self) -> None:
        self._windowed = set(self.windowed or ())

    def note_windowed(self, names) -> None:
        if self.windowed is not None:
            new = [n for n in names if n not in self._windowed]
            self._windowed.update(new)
            self.windowed.extend(new)

    def without_windows(self, entities: dict, channels) -> dict[str, str]:
        """The ``entities`` (name -> state with a ``windower``) read but with no window scored in
        any run of this shard, each with why, as far as its windower knows."""
        if self.windowed is None:
            return {}
        out = {}
        for name in sorted(set(entities) - self._windowed):
            empty = [channels[i] for i in entities[name].windower.channels_without_value()]
            out[name] = (f"no value to fill {', '.join(empty)} from" if empty else
                         "fewer rows than a window between gaps")
        return out

    def note_channels(self, channels, values: np.ndarray) -> None:
        """Count the ``channels`` with a value in ``values`` (N, C); nothing once every one has."""
        seen = self.channels_seen
        if seen is None or len(seen) == len(channels):
            return
        has = ~np.isnan(values).all(axis=0)                                # (C,)
        self.channels_seen = [c for c, h in zip(channels, has) if h or c in seen]

    def missing_channels(self, channels) -> list[str]:
        """The ``channels`` without a value in any row read (all runs of this shard)."""
        if self.channels_seen is None or not self.rows_read:
            return []
        return [c for c in channels if c not in self.channels_seen]


@dataclass
class Checkpoint:
    """The resumable state of one shard of a backfill."""

    artifact_version: str
    archive: dict                       # {"uri", "fingerprint", "fragments"}
    args: dict                          # start, end, shard, layout, precision
    completed: list[str] = field(default_factory=list)      # fragment keys, in order
    entities: dict[str, dict] = field(default_factory=dict)  # name -> {"windower", "threshold"}
    counters: Counters = field(default_factory=Counters)
    output_files: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    output_layout: int = OUTPUT_LAYOUT  # 1: every input folder mirrored, entity= too

    def check_matches(self, artifact_version: str, archive: dict, args: dict, path: str,
                      fingerprint_of_first=None) -> None:
        """Raise if this checkpoint belongs to another run than the one asked for.

        An archive that only grew is the same run's: its first files (``fingerprint_of_first(n)``,
        of the first ``n`` in path order) are the ``n`` this checkpoint listed, unchanged, and
        the files added sort after them (the archiver's next files). The checkpoint then takes
        the archive as it is now, so the run goes on into the new files."""
        hint = ("Re-run with restart=True (--restart) to start over; it deletes this shard's scores "
                "written so far.")
        if self.artifact_version != artifact_version:
            raise ArtifactError(
                f"checkpoint {path} was written with model version {self.artifact_version!r}, "
                f"but this run uses {artifact_version!r}. {hint}")
        n = self.archive["fragments"]
        grown = (fingerprint_of_first is not None and self.archive["uri"] == archive["uri"]
                 and archive["fragments"] > n and fingerprint_of_first(n) == self.archive["fingerprint"])
        if self.archive != archive and not grown:
            raise ConfigError(
                f"checkpoint {path} was written for archive {self.archive['uri']!r} "
                f"({n} files), which differs from {archive['uri']!r} ({archive['fragments']} files) "
                "as it is now: a file it listed changed or went, or one was added before its last "
                f"(files added after its last, as an archiver writes them, are taken on). {hint}")
        was = {k: v for k, v in {**ARG_DEFAULTS, **self.args}.items() if k not in IGNORED_ARGS}
        args = {k: v for k, v in args.items() if k not in IGNORED_ARGS}
        diff = {k: (was.get(k), args.get(k)) for k in {**was, **args} if was.get(k) != args.get(k)}
        if diff:
            listed = ", ".join(f"{k}: was {old!r}, now {new!r}" for k, (old, new) in diff.items())
            raise ConfigError(f"checkpoint {path} was written with other arguments ({listed}). {hint}")
        self.archive = dict(archive)

    def to_json(self) -> bytes:
        # not asdict(self): it deep-copies every entity's state first, which took longer than the dump
        raw = {f.name: getattr(self, f.name) for f in fields(self)}
        raw["counters"] = asdict(self.counters)
        return json.dumps(raw, separators=(",", ":"), allow_nan=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, path: str) -> "Checkpoint":
        try:
            raw = json.loads(data)
            if raw.get("format_version") != FORMAT_VERSION:
                raise ConfigError(
                    f"checkpoint {path} has format {raw.get('format_version')!r}, this version "
                    f"reads format {FORMAT_VERSION}; re-run with --restart.")
            raw["counters"] = Counters(**{"channels_seen": None, "windowed": None, **raw["counters"]})
            raw.setdefault("output_layout", 1)   # written before output_layout existed
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"checkpoint {path} is unreadable ({exc}); "
                              "re-run with --restart to start over.") from exc


def load_checkpoint(fs: pafs.FileSystem, path: str) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return Checkpoint.from_json(stream.read(), path)


def save_checkpoint(fs: pafs.FileSystem, path: str, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically (temporary name, then rename)."""
    write_bytes_atomic(fs, path, checkpoint.to_json())


def delete_checkpoint(fs: pafs.FileSystem, path: str) -> None:
    """Forget a shard's progress (``--restart``)."""
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def other_shardings(fs: pafs.FileSystem, out_root: str, n: int) -> list[str]:
    """Checkpoints under ``out_root`` of runs split into another number of shards than ``n``:
    their parts hold windows a run split into ``n`` would write again, under other names."""
    folder = posixpath.join(out_root, CHECKPOINT_DIR)
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    found = []
    for f in fs.get_file_info(pafs.FileSelector(folder)):
        m = re.fullmatch(r"shard-\d+-of-(\d+)\.json", f.base_name)
        if m and f.type == pafs.FileType.File and int(m.group(1)) != n:
            found.append(f.path)
    return sorted(found)


def discard_run(fs: pafs.FileSystem, path: str) -> int:
    """Delete a shard's checkpoint and the score parts it wrote (``--restart``): a new run must
    not leave the old one's parts beside its own. Returns how many parts were deleted."""
    try:
        parts = (load_checkpoint(fs, path) or Checkpoint("", {}, {})).output_files
    except ConfigError:   # unreadable: its parts cannot be known; the checkpoint goes anyway
        parts = []
    for part in parts:
        try:
            fs.delete_file(part)
        except FileNotFoundError:
            pass
    delete_checkpoint(fs, path)
    return len(parts)


def archive_identity(history, fs, root: str, uri: str):
    """Fingerprint of the archive as it is now (fragment paths and sizes), the fragments' keys
    (their paths relative to the archive root, which name them in checkpoints), and a function
    of ``n``: the fingerprint of the first ``n`` fragments."""
    fragments = history.fragments()
    keys = [fragment_key(f, root) for f in fragments]
    try:
        sizes = [info.size for info in fs.get_file_info([str(f.path) for f in fragments])]
    except (OSError, TypeError, ValueError):
        sizes = [None] * len(fragments)   # a filesystem that cannot tell: paths only
    lines = [f"{k}:{s}" for k, s in zip(keys, sizes)]

    def fingerprint_of_first(n: int) -> str:
        return hashlib.sha1("\n".join(lines[:n]).encode()).hexdigest()

    identity = {"uri": uri, "fingerprint": fingerprint_of_first(len(lines)), "fragments": len(fragments)}
    return identity, keys, fingerprint_of_first


def fragment_key(fragment, root: str) -> str:
    base = str(fragment.path).replace("\\", "/").rsplit("/", 1)[-1]
    rel = relative_dir(fragment.path, root, getattr(fragment, "partition", None))
    return f"{rel}/{base}" if rel else base


@dataclass
class Saver:
    """Saves a backfill's checkpoint after a completed file once ``every_s`` passed since the
    last save, and counts the saves and the seconds they took. Each save writes every entity's
    state, so saving after every file cost the entities squared over an archive of one file per
    entity; a killed run re-scores the files completed since the last save, under the same names."""

    run: object                        # its state_dict() and counters are saved
    checkpoint: Checkpoint
    fs: pafs.FileSystem
    path: str
    every_s: float
    count: int = 0
    seconds: float = 0.0
    pending: bool = False

    def __post_init__(self) -> None:
        self.last = time.monotonic()

    def after_file(self) -> None:
        self.pending = True
        if time.monotonic() - self.last >= self.every_s:
            self.save()

    def save(self) -> None:
        started = time.monotonic()
        self.checkpoint.entities = self.run.state_dict()
        self.checkpoint.counters = self.run.counters
        save_checkpoint(self.fs, self.path, self.checkpoint)
        self.last = time.monotonic()
        self.count, self.seconds, self.pending = self.count + 1, self.seconds + self.last - started, False
