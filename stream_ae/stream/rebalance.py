"""The consumer group's rebalance listener, shared by the stream runner and the archiver.

kafka-python 3 calls the listener on its IO thread, whose event loop also sends the member's
heartbeats. A plain listener blocks that loop for as long as it runs, and a revoke here does
real work: the runner finishes the batches in flight and writes a checkpoint, the archiver
writes its files, both waiting on the broker. One that ran past ``kafka.session_timeout_ms``
(a slow broker, a long flush) got the member evicted while it was still publishing for the
partitions, which the group had meanwhile handed to another member: measured on the embedded
broker, a revoke of 8 s against a 3 s session saw the other member assigned both partitions
7 s into it. So the listener is asynchronous: the work runs on a thread of its own, and the
listener awaits it a few milliseconds at a time, so the heartbeats go on and the group waits
for the revoke to end (up to ``max_poll_interval_ms``, the rebalance timeout) before it assigns
the partitions to anyone else.
"""
from __future__ import annotations

import threading
from typing import Callable

POLL_S = 0.02  # how often the listener looks whether the work it waits for is done


def _sleep_event():
    """kafka-python's event-loop sleep (``await``-able inside a listener), or None in a version
    without it; then the listener blocks the loop, as before."""
    try:
        from kafka.net.selector import KernelEvent
    except ImportError:
        return None
    return lambda seconds: KernelEvent("_sleep", seconds)


_SLEEP = _sleep_event()


async def off_the_loop(work: Callable[[object], None], arg) -> None:
    """Run ``work(arg)`` on a thread of its own and wait for it without holding the client's
    event loop; its exception is raised here."""
    done, failed = threading.Event(), []

    def run():
        try:
            work(arg)
        except BaseException as exc:  # noqa: BLE001 - raised again on the loop
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="stream-ae-rebalance", daemon=True).start()
    while not done.is_set():
        await _SLEEP(POLL_S)
    if failed:
        raise failed[0]


def rebalance_listener(owner):
    """A listener that calls ``owner.on_revoked(partitions)``, ``owner.on_assigned(partitions)``
    and ``owner.on_lost(partitions)`` (the group evicted the member: see ``membership.py``);
    revokes and losses run off the client's event loop (module docstring)."""
    from kafka import AsyncConsumerRebalanceListener, ConsumerRebalanceListener

    if _SLEEP is None:
        class Blocking(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                owner.on_revoked(revoked)

            def on_partitions_assigned(self, assigned):
                owner.on_assigned(assigned)

            def on_partitions_lost(self, lost):
                owner.on_lost(lost)

        return Blocking()

    class Listener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            await off_the_loop(owner.on_revoked, revoked)

        async def on_partitions_assigned(self, assigned):
            owner.on_assigned(assigned)  # notes the partitions; the poll loop restores them

        async def on_partitions_lost(self, lost):  # evicted: the partitions may be another member's already
            await off_the_loop(owner.on_lost, lost)

    return Listener()
