"""The Kafka edge of the streaming detector: poll, decode, detect, publish, checkpoint.

Input policy: ``contracts.py``, ``corrupt_batch.py``. Entity floods: ``entities.py``. Stalls: ``membership.py``.
Recovery, fences: ``checkpoint.py``, ``recovery.py``. One process: ``python -m stream_ae.stream.consumer_process``.

Pipeline: the model runs in ``batch.scoring_threads`` worker threads (the scoring graph holds
the GIL only to enter and leave), each scoring its own micro-batch, while this thread polls,
decodes and windows the next one. While a thread is idle, what a poll brings is submitted at
once; otherwise a batch closes when full or when its wait is over, and at most one more than
the threads waits for one (``max_in_flight``); beyond that, a ready batch keeps growing and up
to a second batch is polled behind it (each poll empties the client's buffer, so the next
fetch goes out at once; ``batcher.py``). Batches are finished (thresholds, alert lifecycles, publish,
offsets) on this thread, in order. Every checkpoint, revoke, restore and the shutdown first
finish the batches in flight (a periodic checkpoint lets them finish while polling on, and
submits none meanwhile), so a checkpoint never covers a batch whose alerts are not produced;
its thread writes the state only once they are acknowledged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
import threading
from typing import Callable

from stream_ae.drift import artifact_reference
from stream_ae.errors import StreamAEError
from stream_ae.stream import codec, record_decoding
from stream_ae.stream.batcher import InFlight, MicroBatcher
from stream_ae.stream.rebalance import rebalance_listener
from stream_ae.stream.checkpoint import Checkpointer
from stream_ae.stream.corrupt_batch import first_offset
from stream_ae.stream.detector import build_detector
from stream_ae.stream.drift_watch import DriftWatch
from stream_ae.stream.membership import GroupMembership
from stream_ae.stream.metrics import StreamMetrics
from stream_ae.stream.model_swap import ModelSwap, stream_scorer
from stream_ae.stream.publisher import Publisher
from stream_ae.stream.recovery import by_recency, take_over
from stream_ae.stream.tuning import tune_process

log = logging.getLogger(__name__)


class StreamRunner:
    """One consumer of the readings topic.

    Parameters
    ----------
    settings : Settings
        Validated service settings (``stream_ae.stream.settings``).
    scorer : Scorer or Artifact
        The model; an Artifact becomes a Scorer on ``settings.model.device`` and ``.precision``, warmed up.
    reload : callable or None
        ``reload() -> Scorer | None``, called every ``model.reload_interval_s`` between
        batches; a Scorer returned is swapped in (hot reload).
    checkpoint_interval_s : float or None
        Seconds between checkpoints (also taken on revoke and on shutdown); None: ``kafka.checkpoint_interval_s``.
    metrics : StreamMetrics or None
        Where to count; a new registry by default.
    """

    def __init__(self, settings, scorer, *, reload: Callable[[], object] | None = None,
                 checkpoint_interval_s: float | None = None, metrics: StreamMetrics | None = None):
        from stream_ae.artifact import Artifact

        if isinstance(scorer, Artifact):
            scorer = stream_scorer(scorer, settings)
        self.settings = settings
        self.metrics = metrics or StreamMetrics()
        self.detector = build_detector(settings, scorer)
        self.drift = DriftWatch(settings, self.metrics)
        self.metrics.set_model(scorer.version)
        self.decoder = codec.ReadingDecoder(settings.input.max_message_bytes, settings.input.unknown_fields,
                                            settings.input.future_limit_s())
        self.batcher = MicroBatcher(settings.batch.max_size, settings.batch.max_wait_ms / 1000)
        self.checkpoint_interval_s = float(settings.kafka.checkpoint_interval_s if checkpoint_interval_s is None
                                           else checkpoint_interval_s)
        self._swap = ModelSwap(reload, settings.model.reload_interval_s)
        self._consumer = self._publisher = self._checkpointer = self.membership = None
        self._next_offsets: dict[int, int] = {}  # readings partition -> next offset processed
        self._assigned, self._to_restore = set(), set()  # partitions: restored / to restore
        self._failed = self._closing = False
        self._revoke_error: BaseException | None = None  # kafka-python logs a listener's error and goes on
        self._lock = threading.RLock()  # the rebalance listener runs on a thread of its own (rebalance.py)
        self._inflight: deque[InFlight] = deque()  # prepared batches, oldest first
        self._writing: tuple[Future, dict[int, int]] | None = None  # a checkpoint being written, its positions
        self.scoring_threads, self.max_in_flight = settings.batch.scoring_threads, settings.batch.scoring_threads + 1
        self._scoring: ThreadPoolExecutor | None = None  # the model's threads, while run() runs

    # -- lifecycle ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; then finish the batch, checkpoint, commit and close."""
        from kafka import KafkaConsumer, KafkaProducer

        s = self.settings
        with contextlib.ExitStack() as stack:
            producer = KafkaProducer(**{"linger_ms": 2, **s.kafka_client_kwargs("producer"), "acks": "all",
                                        "enable_idempotence": True})
            stack.callback(producer.close, 10)
            self._checkpointer = Checkpointer(producer, s.kafka.state_topic, self.checkpoint_interval_s,
                                              output_failed=lambda: self._publisher.failed)
            stack.callback(self._checkpointer.close)  # a write in progress ends before the producer closes
            self._publisher = Publisher(producer, s.kafka, self._checkpointer, self.metrics)
            self._consumer = KafkaConsumer(**{**s.kafka_client_kwargs("consumer"), "enable_auto_commit": False})
            stack.callback(self._close_consumer)
            self.membership = GroupMembership(self._consumer, s.kafka.readings_topic)
            record_decoding.install(self._consumer, s.kafka.record_decoder)
            self._scoring = ThreadPoolExecutor(self.scoring_threads, thread_name_prefix="stream-ae-scoring")
            stack.callback(self._stop_scoring)
            self._consumer.subscribe([s.kafka.readings_topic], listener=rebalance_listener(self))
            tune_process(stack, s.batch.torch_threads)  # threads, GIL switch interval, frozen heap
            self.metrics.running = True
            try:
                while not stop.is_set():
                    self.step()
                if self.membership.confirm():  # not after a stall that cost the partitions
                    with self._lock:
                        self._drain()
                    self.checkpoint()
            except BaseException:
                self._failed = True  # no final commit: a restart replays from the last checkpoint
                raise
            finally:
                self.metrics.running = False

    def _stop_scoring(self) -> None:
        self._scoring.shutdown(wait=True, cancel_futures=True)
        self._scoring = None

    def _close_consumer(self) -> None:
        with self._lock:
            self._closing = True  # the revoke-on-close listener has nothing left to do
        self._consumer.close(autocommit=False)

    def step(self) -> None:
        """One poll, and whatever is due: submit a batch, finish scored ones, checkpoint, reload."""
        self.membership.confirm()  # after a stall, before anything is published again
        timeout = self.batcher.poll_timeout_ms()
        if self._inflight:  # come back soon to publish the scored batch's alerts
            timeout = min(max(timeout, 1), 2)  # >= 1 ms: a ready batch waiting for the model must not spin
        records = self._consumer.poll(timeout_ms=timeout, max_records=self.batcher.room() or 1)
        self.metrics.polled()
        with self._lock:
            if self._revoke_error is not None:
                raise StreamAEError(f"the checkpoint of revoked partitions failed ({self._revoke_error}); "
                                    "stopping without a commit: a restart replays from the last checkpoint"
                                    ) from self._revoke_error
            if self._to_restore:  # a join has just confirmed the membership
                self._finish_inflight(confirmed=True)
                records = self._restore(records)
            for tp, batch in records.items():  # each list: one partition, in offset order
                self.batcher.add(tp.partition, batch)
            while self._inflight and self._inflight[0].done() and self._finish_oldest():
                pass
            checkpoint_due = bool(self._assigned) and self._writing is None and (
                self._checkpointer.due() or self.detector.table.overflowing())  # an entity flood: write the evicted
            if self._inflight and not self.batcher.room() and (
                    checkpoint_due or len(self._inflight) >= self.max_in_flight):
                self._finish_oldest()  # back-pressure: wait for the model (a hung one stops the polls: liveness)
            if self.batcher.ready(idle=len(self._inflight) < self.scoring_threads) and not checkpoint_due \
                    and len(self._inflight) < self.max_in_flight:
                self._submit_batch()  # else the model is busy and the batch has room: it grows
            self.metrics.update_lag(self._consumer)   # at most twice a second, whether batches finish or not
        if self._writing is not None and self._writing[0].done():
            self._commit_written()
        if checkpoint_due and not self._inflight:
            self.checkpoint(wait=False)
        self._maybe_reload()

    def swap_scorer(self, scorer) -> None:
        """Hot reload from any thread: the new model scores the batches after the next checkpoint."""
        self._swap.offer(scorer)

    def _maybe_reload(self) -> None:
        """Swap in a new model once what the old one scored is checkpointed, and not while a restored
        partition replays its previous owner's readings: a crash after the swap replays only what the
        new one scores, and what is replayed is what published its alerts (else one might never resolve)."""
        if self._swap.waiting(self.detector.model_version) is None or self._checkpointer.replaying(
                self._next_offsets) or (self._assigned and not self.checkpoint()):
            return  # no new model, a replay under way, or no checkpoint now (a stall awaits a poll's confirmation)
        with self._lock:
            scorer = self._swap.take()
            self.detector.swap_scorer(scorer)
        self.metrics.set_model(scorer.version)
        log.info("model swapped to %s", scorer.version)

    # -- one micro-batch --------------------------------------------------------------------
    def _submit_batch(self, reload: bool = True) -> None:
        """Decode and window the batcher's records; their scoring starts on the model's thread. ``reload``: swap in
        a model waiting first (not in a listener, where a checkpoint would hold the rebalance up)."""
        records, ends = self.batcher.take()
        if not records:
            return
        if reload:
            self._maybe_reload()
        self.metrics.consumed.inc(len(records))
        self.metrics.batch_size.observe(len(records))
        cols, bad = self.decoder.decode_columns(records, self.detector.channels)
        batch, ingest_s = cols.to_batch()
        prep = self.detector.prepare(batch)
        if self._scoring is not None and prep.rows is not None:
            future = self._scoring.submit(prep.score)
        else:  # nothing to score, or no model thread (not running): score here
            future = Future()
            future.set_result(prep.score())
        self._inflight.append(InFlight(ends, cols, ingest_s, future, bad))

    def _finish_oldest(self, confirmed: bool = False) -> bool:
        """Thresholds, alert lifecycles, publish and offsets of the oldest batch in flight; False
        (the batch stays) after a stall, until a poll has confirmed the group membership."""
        job = self._inflight[0]
        prep = job.future.result()  # re-raises a scoring error here
        if not (confirmed or self.membership.fresh()):
            return False
        self._inflight.popleft()
        for letter in job.letters:  # the decoder's, sent with the batch's alerts: after the membership check
            self._publisher.dead_letter(letter)
        out = self.detector.finish(prep)
        m = self.metrics
        for i, reason in out.rejected:
            if self.settings.input.late_policy == "dead_letter":
                self._publisher.dead_letter(codec.dead_letter(job.cols.messages[i], reason, codec.REJECT_DETAIL[reason],
                                                              entity=job.cols.entity[i]))
            else:
                m.dead_letters.labels(reason).inc()
        for event, i in zip(out.events, out.event_index):
            self._publisher.alert(event, job.ingest_s[i])
        self.drift.observe(out, prep.scorer.version, artifact_reference(prep.scorer.artifact))
        m.windows.inc(out.windows_scored)
        m.batch_windows.observe(out.windows_scored)
        if out.windows_scored:
            m.scoring_seconds.observe(out.scoring_s)
        m.replayed.inc(out.skipped)
        m.suppressed.inc(out.suppressed)
        m.set_entities(self.detector.table)
        for p, end in job.ends.items():
            if end > self._next_offsets.get(p, -1):
                self._next_offsets[p] = end
        return True

    def _finish_inflight(self, confirmed: bool = False) -> bool:
        """Finish every batch in flight; False if a stall left some for after the next poll."""
        while self._inflight:
            if not self._finish_oldest(confirmed):
                return False
        return True

    def _drain(self) -> None:
        """Process and finish everything held (a revoke, or the shutdown with a confirmed membership)."""
        while self.batcher:  # it may hold more than one batch; the model waiting is swapped in after
            self._submit_batch(reload=False)
        self._finish_inflight(confirmed=True)

    # -- checkpoint and recovery -------------------------------------------------------------
    def checkpoint(self, *, in_listener: bool = False, wait: bool = True) -> bool:
        """Snapshot the changed entity states and the replay positions for the checkpoint thread
        to write (``checkpoint.py``); commit them once written. A periodic one (``wait=False``)
        lets the poll loop go on meanwhile and commits without waiting for the answer: the state
        topic, not the commit, says where a partition resumes. Not after a stall before a poll
        has confirmed the membership (``membership.py``); then it returns False."""
        with self._lock:
            if not ((in_listener or self.membership.fresh()) and self._finish_inflight(in_listener)):
                return False
            self._commit_written(block=True)  # one write at a time
            positions = {p: o for p, o in self._next_offsets.items() if p in self._assigned}
            held, write = self._checkpointer.begin(self.detector.table, positions, self.drift.state(), self._highwater,
                                                   dict(self.detector.clocks.now), settle=wait)
            if not self._checkpointer.holding():  # every replay passed its previous owner: nothing to suppress,
                for event in self.detector.forget_published():   # and an alert no replay carried on is closed
                    self._publisher.alert(event, None)
            self.metrics.checkpoint_seconds.observe(held)
            self._writing = (write, positions)
            if not (wait or in_listener):
                return True
            written = self._written(block=True)
        self.membership.commit(written, blocking=wait and not in_listener)
        return True

    def _commit_written(self, block: bool = False) -> None:
        """Commit, without waiting for the answer, the checkpoint being written once it is (``block``: wait)."""
        with self._lock:
            self.membership.commit(self._written(block), blocking=False)

    def _written(self, block: bool = False) -> dict[int, int] | None:
        """Once the checkpoint being written is (``block``: wait), its positions still assigned; or its error."""
        if self._writing is None or not (block or self._writing[0].done()):
            return None
        (write, positions), self._writing = self._writing, None
        seconds, states = write.result()  # the producer's error, or no state after a failed alert
        if self._failed or self._publisher.failed:
            raise StreamAEError("an alert, dead letter or state record could not be produced; not "
                                "committing (a restart replays from the last checkpoint)")
        self.metrics.checkpointed(seconds, states)
        return {p: o for p, o in positions.items() if p in self._assigned}

    def on_revoked(self, revoked) -> None:
        """Listener (off the client's event loop: rebalance.py): finish the batch, checkpoint, forget the partitions."""
        parts = {tp.partition for tp in revoked}
        with self._lock:
            if self._closing or not parts:
                return
            try:
                if self._failed or self._publisher.failed:  # no checkpoint can be written: stop at the next poll
                    raise StreamAEError("an alert, dead letter or state record could not be produced")
                self._drain()
                self.checkpoint(in_listener=True)
            except BaseException as exc:  # for the poll loop to raise: the client would only log it
                self._failed, self._revoke_error = True, exc
                raise
            finally:
                self._forget(parts)  # revoked either way: nothing more is written for them

    def on_lost(self, lost) -> None:
        """Listener (off the client's event loop): the group evicted this member after a stall, and the
        partitions may already be another member's, restored from the last checkpoint. Nothing
        more is published, checkpointed or committed for them: the readings held and the batches
        in flight are dropped with the partitions' entities, and the next owner replays them."""
        parts = {tp.partition for tp in lost}
        with self._lock:
            if self._closing or not parts:
                return
            self.batcher.clear()
            while self._inflight:
                with contextlib.suppress(Exception):  # a scoring error is the next owner's to see
                    self.detector.discard(self._inflight.popleft().future.result())
            others = self._assigned - parts  # none with kafka-python: it loses the whole assignment
            self._forget(parts | others)
            self._to_restore |= others  # their windows moved on with the dropped batches: replayed
            self.metrics.lost.inc(len(parts))
            log.warning("partitions %s lost to a rebalance this member missed (a stall): their readings "
                        "held and in flight are dropped for the next owner to replay", sorted(parts))

    def _forget(self, parts: set[int]) -> None:
        self.detector.forget_partitions(parts)
        self._publisher.forget(parts)
        self._checkpointer.release(parts)
        for p in parts:
            self._next_offsets.pop(p, None)
        self._assigned -= parts
        self._to_restore -= parts
        self.membership.forget(parts)
        self.metrics.set_assignment(self._assigned)
        self.metrics.set_entities(self.detector.table)

    def on_assigned(self, assigned) -> None:
        """Listener (client IO thread): note the partitions; the poll loop restores them."""
        with self._lock:
            self._to_restore |= {tp.partition for tp in assigned}

    def _restore(self, records: dict) -> dict:
        """Restore newly assigned partitions from the state topic before any of their records is processed
        (their records from this poll are dropped and fetched again); reading counts as polls for liveness."""
        from kafka import TopicPartition

        self._commit_written(block=True)  # this member's last write first
        parts, self._to_restore = sorted(self._to_restore), set()
        k = self.settings.kafka
        fence = functools.partial(self._checkpointer.fence, generation=self._consumer.group_metadata().generation_id)
        restored, published, ends, letters, letter_ends = take_over(self.settings, parts, fence, self.metrics.polled)
        for entity, snap in by_recency(restored[p] for p in parts):   # the most recent end up live
            self.detector.restore(entity, snap)
        resume = {}  # partition -> where it resumes: its record's offset, else the group's (its commit or reset)
        for p in parts:
            tp = TopicPartition(k.readings_topic, p)
            dropped = records.pop(tp, None)
            positions = restored[p].positions
            start = positions.next_offset if positions else first_offset(dropped[0]) if dropped else None
            if start is not None:
                self._consumer.seek(tp, start)
            else:  # an idle partition still gets a record, or every restore would read the outputs from 0
                start = self._consumer.position(tp, timeout_ms=10_000)  # None: unknown for now
            if start is not None:
                self._next_offsets[p] = resume[p] = start
            self._checkpointer.hold(p, positions)  # until the replay passes the previous owner
            self.detector.clocks.resume(p, positions.clock if positions else None)
        self.detector.suppress(published)
        self._publisher.already_sent |= {s for s in letters if s[0] == k.readings_topic
                                         and s[1] in restored and s[2] >= resume.get(s[1], 0)}
        self.drift.resume([(r.positions.written_at, r.positions.drift) for r in restored.values() if r.positions],
                          self.detector.model_version, artifact_reference(self.detector.scorer.artifact))
        self._checkpointer.restored(ends, letter_ends)  # the alerts read; the next checkpoint an interval from now
        self._assigned |= set(parts)
        self.membership.assigned(parts, resume)
        self.metrics.set_assignment(self._assigned)
        self.metrics.set_entities(self.detector.table)
        log.info("assigned %s: restored %d entities, %d events already published, %d fenced records", parts,
                 sum(len(restored[p].entities) for p in parts), len(published), sum(restored[p].dropped for p in parts))
        return records

    def _highwater(self, p: int) -> int | None:
        """Readings partition ``p``'s fetch high-watermark; None until a fetch has told it."""
        from kafka import TopicPartition

        with contextlib.suppress(Exception):  # no longer assigned (a revoke under way)
            return self._consumer.highwater(TopicPartition(self.settings.kafka.readings_topic, p))
        return None
