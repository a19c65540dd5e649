"""Score a Parquet archive with a trained artifact: the batch edge of the one scoring path.

Fragments are read in a fixed order, record batch by record batch (memory stays bounded
whatever the archive size). Each entity keeps one :class:`SeriesWindower` and one
threshold started from the artifact's calibrated state, so the threshold moves along
time exactly as it would in the stream. Every fragment becomes one atomic scores part
in the same hive directory, followed by a checkpoint, so a killed run resumes exactly.
"""
from __future__ import annotations

import copy
import dataclasses
import posixpath
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from stream_ae.backfill.checkpoint import (Checkpoint, Counters, Saver, archive_identity, checkpoint_path,
                                           discard_run, load_checkpoint, other_shardings)
from stream_ae.backfill.output import (AtomicPart, check_output_place, expected_parts, output_dir, part_name,
                                       remove_parts, resolve_filesystem, scores_table)
from stream_ae.data.history import check_time_order
from stream_ae.errors import ConfigError, DataError
from stream_ae.progress import progress_bar

DEFAULT_BATCH_ROWS = 65_536
DEFAULT_CHECKPOINT_EVERY_S = 30.0


@dataclass
class BackfillReport:
    """What a backfill did. Totals include fragments completed by earlier (resumed) runs;
    ``seconds`` and ``windows_per_s`` are this run's."""

    rows_read: int                # rows of this shard's entities
    windows_scored: int
    anomalies: int
    duplicates_dropped: int
    seconds: float
    windows_per_s: float
    output_files: list[str]
    fragments_done: int           # scored by this run
    fragments_resumed: int        # already done by an earlier run
    fragments_other_shards: int   # skipped unread: hive-partitioned by another shard's entity
    complete: bool                # False when stopped by max_fragments
    shard: tuple[int, int]
    model_version: str
    checkpoints_saved: int = 0    # by this run
    checkpoint_seconds: float = 0.0
    entities_without_windows: dict = field(default_factory=dict)   # read, none scored: name -> why

    def to_dict(self) -> dict:
        return asdict(self)


def parse_shard(shard) -> tuple[int, int]:
    """``(i, n)`` from a tuple or an ``"i/n"`` string, checked: 0 <= i < n.

    Examples
    --------
    >>> parse_shard("2/3")
    (2, 3)
    >>> parse_shard((3, 3))
    Traceback (most recent call last):
    ...
    stream_ae.errors.ConfigError: shard 3/3 is out of range: give i/n with 0 <= i < n (e.g. 0/3, 1/3, 2/3)
    """
    try:
        i, n = (int(x) for x in (shard.split("/") if isinstance(shard, str) else shard))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"shard must be 'i/n' (e.g. 0/4), got {shard!r}") from exc
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard {i}/{n} is out of range: give i/n with 0 <= i < n "
                          f"(e.g. 0/3, 1/3, 2/3)")
    return i, n


def shard_of(entity: str, n: int) -> int:
    """The shard that owns an entity: a hash stable across processes and machines.

    Examples
    --------
    >>> shard_of("pump-7", 1), shard_of("pump-7", 3) == shard_of("pump-7", 3)
    (0, True)
    """
    return zlib.crc32(str(entity).encode("utf-8")) % n


@dataclass
class _Entity:
    windower: object
    threshold: object


@dataclass
class _Run:
    """The state of one shard while it runs (per-entity state, counters, scorer)."""

    artifact: object
    scorer: object
    layout: object
    shard: tuple[int, int]
    entities: dict = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    _mine: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from stream_ae.thresholds import ThresholdSpec, build_threshold
        self._build_threshold = build_threshold
        self._threshold_spec = ThresholdSpec.from_dict(self.artifact.threshold["spec"])
        self._channels = pa.array(list(self.artifact.channels), type=pa.string())
        self._version = pa.array([self.artifact.version], type=pa.string())

    # -- per-entity state --------------------------------------------------------------
    def entity(self, name: str) -> _Entity:
        state = self.entities.get(name)
        if state is None:
            from stream_ae.data.windows import SeriesWindower
            threshold = self._build_threshold(self._threshold_spec)
            if self.artifact.threshold.get("state") is not None:   # None: uncalibrated, it warms up
                threshold.load_state_dict(copy.deepcopy(self.artifact.threshold["state"]))
            state = _Entity(SeriesWindower(self.artifact.window, len(self.artifact.channels)),
                            threshold)
            self.entities[name] = state
        return state

    def is_mine(self, name: str) -> bool:
        mine = self._mine.get(name)
        if mine is None:
            mine = self._mine[name] = shard_of(name, self.shard[1]) == self.shard[0]
        return mine

    def owns(self, fragment) -> bool:
        """False for a file hive-partitioned by an entity of another shard (skipped unread)."""
        owner = (getattr(fragment, "partition", None) or {}).get(self.layout.entity)
        return owner is None or self.is_mine(str(owner))

    def state_dict(self) -> dict:
        return {name: {"windower": e.windower.state_dict(), "threshold": e.threshold.state_dict()}
                for name, e in self.entities.items()}

    def load_state_dict(self, states: dict) -> None:
        for name, d in states.items():
            state = self.entity(name)
            state.windower.load_state_dict(d["windower"])
            state.threshold.load_state_dict(d["threshold"])

    # -- one record batch --------------------------------------------------------------
    def score_batch(self, rows) -> pa.Table | None:
        """Window, score and threshold one record batch; the scores table or None."""
        codes, names = pd.factorize(rows.entity, use_na_sentinel=False)   # (N,), (E,)
        mine = np.fromiter((self.is_mine(str(e)) for e in names), bool, len(names))
        ts, values = rows.ts, rows.values                                  # (N,), (N, C)
        if not mine.all():
            keep = mine[codes]
            codes, ts, values = codes[keep], ts[keep], values[keep]
        if len(codes) == 0:
            return None
        self.counters.rows_read += len(codes)
        self.counters.note_channels(self.artifact.channels, values)
        if len(codes) > 1 and (np.diff(codes) < 0).any():   # entities interleaved: group them
            order = np.argsort(codes, kind="stable")          # stable: time order kept per entity
            codes, ts, values = codes[order], ts[order], values[order]
        bounds = np.searchsorted(codes, np.arange(len(names) + 1))

        pushed, starts, offset = [], [], 0
        for code in np.flatnonzero(np.diff(bounds)):
            lo, hi = bounds[code], bounds[code + 1]
            name = str(names[code])
            batch = self.entity(name).windower.push(ts[lo:hi], values[lo:hi])
            if len(batch.rejected):
                self._check_rejected(rows.source, name, ts[lo:hi], batch)
            if len(batch.starts):
                pushed.append((name, batch))
                starts.append(batch.starts + offset)
                offset += len(batch.rows)
        if not pushed:
            return None

        all_rows = pushed[0][1].rows if len(pushed) == 1 else np.concatenate(
            [b.rows for _, b in pushed])                                   # (M, C)
        scored = self.scorer.score_rows(all_rows, np.concatenate(starts))  # one model call
        flags, values_used, lo = [], [], 0
        for name, batch in pushed:
            hi = lo + len(batch.starts)
            f, v = self.entities[name].threshold.step_many(scored.score[lo:hi])
            flags.append(f)
            values_used.append(v)
            lo = hi
        anomaly = np.concatenate(flags)
        self.counters.note_windowed(n for n, _ in pushed)
        self.counters.windows_scored += len(anomaly)
        self.counters.anomalies += int(anomaly.sum())
        counts = [len(b.starts) for _, b in pushed]
        return scores_table(
            entity_names=np.array([n for n, _ in pushed], dtype=object),
            entity_codes=np.repeat(np.arange(len(pushed)), counts),
            start_ts=np.concatenate([b.start_ts for _, b in pushed]),
            end_ts=np.concatenate([b.end_ts for _, b in pushed]),
            score=scored.score, threshold=np.concatenate(values_used), anomaly=anomaly,
            channel_error=scored.channel_error, channels=self._channels, version=self._version)

    def _check_rejected(self, source: str, name: str, ts: np.ndarray, batch) -> None:
        self.counters.duplicates_dropped += check_time_order(source, name, ts, batch, self.layout)


def default_score_batch(device: str) -> int:
    """Windows per forward pass: 2048 on CPU (as fast as 8192 there, and keeps the peak memory
    flat), 8192 on CUDA."""
    from stream_ae.scoring import resolve_device

    return 8192 if resolve_device(device).type == "cuda" else 2048


def run_backfill(archive: str, artifact_path: str, out: str, shard=(0, 1), start=None, end=None,
                 device: str = "auto", batch_rows: int = DEFAULT_BATCH_ROWS, progress: bool = True,
                 layout=None, restart: bool = False, max_fragments: int | None = None,
                 score_batch: int | None = None, precision: str = "fp32",
                 checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S) -> BackfillReport:
    """Score every window of a Parquet archive and write a scores dataset partitioned like it.

    Parameters
    ----------
    archive : str
        Local path or URI (``s3://...``) of a Parquet dataset (hive partitions allowed),
        sorted by timestamp within each entity.
    artifact_path : str
        A model artifact directory (``models/<version>``).
    out : str
        Root of the scores dataset; input ``<archive>/date=X/part-0.parquet`` gives
        ``<out>/date=X/part-<i>-<hash>.parquet``. Checkpoints live in ``<out>/_checkpoints/``.
    shard : (int, int) or "i/n"
        Score only the entities with ``crc32(entity) % n == i``; the n shards together equal
        an unsharded run. Each shard may run on its own worker, into the same ``out``.
    start, end : optional
        Time bounds passed to :meth:`History.open`.
    device : str
        Torch device for the model ("auto", "cpu", "cuda", ...).
    batch_rows : int
        Rows per record batch read (memory bound; also the unit of one model call).
    progress : bool
        Show a tqdm bar (rows, windows, windows/s).
    layout : Layout, optional
        Column layout of the archive; default: the artifact's.
    restart : bool
        Forget this shard's checkpoint and start over.
    max_fragments : int, optional
        Stop after scoring this many fragments (the next run resumes from there).
    score_batch : int, optional
        Windows per forward pass; default 2048 on CPU (as fast as 8192 there, and keeps
        the peak memory flat), 8192 on CUDA.
    precision : str
        ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast (see :class:`~stream_ae.scoring.Scorer`);
        part of the checkpoint's arguments, so a resumed run keeps one precision.
    checkpoint_every_s : float
        Save the checkpoint after the first input file completed this long after the last save
        (0: after every file), and when the run ends. A killed run re-scores about this much;
        the files it re-scores are rewritten under the same names. Every save writes every
        entity's state, so saving after each file of an archive of one file per entity grew
        with the number of entities squared.

    Returns
    -------
    BackfillReport

    Raises
    ------
    SchemaMismatch
        The archive's channels differ from the model's.
    DataError
        An entity's readings go back in time within the archive (file, entity and column named);
        a channel has no value in any row of the whole span read (this shard's entities).
    ArtifactError, ConfigError
        A checkpoint from another model version or other arguments exists (use ``restart``).
    """
    from stream_ae.artifact import check_channels, load_artifact
    from stream_ae.data.history import History
    from stream_ae.scoring import Scorer

    shard = parse_shard(shard)
    if int(batch_rows) < 1:
        raise ConfigError(f"--batch-rows (batch_rows) must be a positive integer, got {batch_rows!r}")
    if not checkpoint_every_s >= 0:
        raise ConfigError("--checkpoint-every (checkpoint_every_s) must be 0 or more seconds, "
                          f"got {checkpoint_every_s!r}")
    t0 = time.perf_counter()
    artifact = load_artifact(artifact_path)
    layout = artifact.layout if layout is None else layout
    # the model's channels unless the layout names them: a column some files have and others
    # lack (a sensor added or retired over the years) is then not asked of every file
    read = layout if layout.channels is not None else dataclasses.replace(layout, channels=tuple(artifact.channels))
    history = History.open(str(archive), layout=read, start=start, end=end)
    check_channels(artifact, history.channels)

    in_fs, in_root = resolve_filesystem(str(archive))
    out_fs, out_root = resolve_filesystem(str(out))
    check_output_place(in_fs, in_root, out_fs, out_root, str(out))
    where = str(archive) if "://" in str(archive) else in_root   # one spelling per archive
    identity, keys, fingerprint_of_first = archive_identity(history, in_fs, in_root, where)
    args = {"start": None if start is None else str(start), "end": None if end is None else str(end),
            "shard": list(shard), "layout": layout.to_dict(), "precision": precision}
    ckpt_path = checkpoint_path(out_root, shard)
    others = other_shardings(out_fs, out_root, shard[1])
    if others and not restart:
        raise ConfigError(f"{out} holds a backfill split into another number of shards "
                          f"({', '.join(posixpath.basename(p) for p in others)}); as {shard[0]}/{shard[1]} "
                          "its windows would be written twice. Use another --out, or --restart to replace it")
    if restart:   # this shard's earlier parts, and those of a run split otherwise, go with their checkpoints
        for path in (ckpt_path, *others):
            discard_run(out_fs, path)
    checkpoint = load_checkpoint(out_fs, ckpt_path)
    if score_batch is None:
        score_batch = default_score_batch(device)
    run = _Run(artifact=artifact, scorer=Scorer(artifact, device=device, batch_size=score_batch, precision=precision),
               layout=layout, shard=shard)
    fresh = checkpoint is None
    if fresh:
        checkpoint = Checkpoint(artifact.version, identity, args)
    else:
        checkpoint.check_matches(artifact.version, identity, args, ckpt_path, fingerprint_of_first)
        run.load_state_dict(checkpoint.entities)
        run.counters = checkpoint.counters
    remove_parts(out_fs, out_root, expected_parts(keys, layout.entity, legacy=checkpoint.output_layout < 2), shard,
                 temporary_only=not fresh)

    done = set(checkpoint.completed)
    todo = [(f, k) for f, k in zip(history.fragments(), keys) if k not in done]
    resumed = len(keys) - len(todo)
    windows_before, scored, other_shards = run.counters.windows_scored, 0, 0
    skips_unread = shard[1] > 1 and layout.entity in getattr(history, "partition_keys", ())
    total = None   # rows of the files this run reads: every file in range, or those left that are this shard's
    if progress:
        total = history.count_rows([f for f, _ in todo if run.owns(f)] if resumed or skips_unread else None)
    bar = progress_bar(progress, total=total, unit="row", unit_scale=True, desc=f"backfill {shard[0]}/{shard[1]}")
    saves = Saver(run, checkpoint, out_fs, ckpt_path, checkpoint_every_s)
    try:
        for fragment, key in todo:
            if max_fragments is not None and scored >= max_fragments:
                break
            if not run.owns(fragment):
                other_shards += 1          # hive-partitioned by entity: skip unread
                continue
            rel = output_dir(key.rsplit("/", 1)[0] if "/" in key else "", layout.entity,
                             legacy=checkpoint.output_layout < 2)
            path = "/".join(p for p in (out_root, rel, part_name(shard[0], key)) if p)
            part = AtomicPart(out_fs, path)
            try:
                for rows in history.iter_rows(fragment, batch_rows=int(batch_rows)):
                    table = run.score_batch(rows)
                    if table is not None:
                        part.write(table)
                    bar.update(len(rows.ts))
                    rate = (run.counters.windows_scored - windows_before) / max(
                        time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(windows=run.counters.windows_scored, win_s=f"{rate:,.0f}",
                                    refresh=False)
                written = part.commit()
            except BaseException:
                part.abort()
                raise
            if written is not None and written not in checkpoint.output_files:
                checkpoint.output_files.append(written)
            checkpoint.completed.append(key)
            scored += 1
            saves.after_file()
        if saves.pending:   # the files completed since the last save
            saves.save()
    finally:
        bar.close()

    seconds = time.perf_counter() - t0
    c = run.counters
    complete = len(checkpoint.completed) + other_shards == len(keys)
    missing = c.missing_channels(artifact.channels) if complete else []
    if missing:
        of = f" of shard {shard[0]}/{shard[1]}'s entities" if shard[1] > 1 else ""
        raise DataError(
            f"{archive}: channel {missing[0]!r} has no value (every one NaN or null) in the "
            f"{c.rows_read} rows{of} read, so no window with it could be scored ({c.windows_scored} scored, "
            f"written to {out}). Fix the data, widen --start/--end, or score with a model trained without "
            "the channel")
    return BackfillReport(
        rows_read=c.rows_read, windows_scored=c.windows_scored, anomalies=c.anomalies,
        duplicates_dropped=c.duplicates_dropped, seconds=round(seconds, 3),
        windows_per_s=round((c.windows_scored - windows_before) / max(seconds, 1e-9), 1),
        output_files=list(checkpoint.output_files), fragments_done=scored,
        fragments_resumed=resumed, fragments_other_shards=other_shards,
        complete=complete, shard=shard,
        model_version=artifact.version, checkpoints_saved=saves.count,
        checkpoint_seconds=round(saves.seconds, 3),
        entities_without_windows=c.without_windows(run.entities, artifact.channels) if complete else {})


