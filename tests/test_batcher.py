"""The micro-batcher: whole polls in, batches of at most max_size out, with the offsets a
commit may cover after each, and the wait clock of what one batch could not take."""
import random
from collections import namedtuple

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.batcher import MicroBatcher

Rec = namedtuple("Rec", "partition offset")


@pytest.mark.parametrize("seed", range(20))
def test_batches_keep_poll_order_and_report_each_partitions_end(seed):
    rng = random.Random(seed)
    size = rng.randint(1, 40)
    b = MicroBatcher(size, 0.02, clock=lambda: 0.0)
    next_offset = {p: rng.randint(0, 1000) for p in range(4)}
    added, taken = [], []
    for _ in range(60):
        for p in rng.sample(range(4), rng.randint(0, 4)):  # one poll: a list per partition
            n = rng.randint(0, 3 * size)
            recs = [Rec(p, next_offset[p] + i) for i in range(n)]
            next_offset[p] += n
            b.add(p, recs)
            added += recs
            assert len(b) <= len(added) - len(taken)
        while b.ready() and rng.random() < 0.7:
            batch, ends = b.take()
            assert 1 <= len(batch) <= size
            want = {}
            for r in batch:
                want[r.partition] = max(want.get(r.partition, -1), r.offset + 1)
            assert ends == want
            taken += batch
    while b:
        taken += b.take()[0]
    assert taken == added and b.take() == ([], {})


def test_what_a_batch_cannot_take_keeps_its_arrival_time():
    t = [0.0]
    b = MicroBatcher(4, 0.05, clock=lambda: t[0])
    b.add(0, [Rec(0, i) for i in range(3)])
    t[0] = 0.03
    b.add(1, [Rec(1, i) for i in range(3)])  # arrived at 0.03: the 2 left over wait from then
    assert b.ready() and b.room() == 2
    batch, ends = b.take()
    assert [r.offset for r in batch] == [0, 1, 2, 0] and ends == {0: 3, 1: 1}
    assert len(b) == 2 and not b.ready()
    t[0] = 0.079
    assert not b.ready() and b.poll_timeout_ms() == 1
    assert b.ready(idle=True)                # an idle model thread takes it now
    t[0] = 0.08
    assert b.ready() and b.take() == ([Rec(1, 1), Rec(1, 2)], {1: 3})
    assert not b.ready() and b.poll_timeout_ms() == 50  # empty: a full wait
    assert not b.ready(idle=True)            # nothing to take, idle or not


def test_a_poll_may_bring_up_to_two_batches():
    b = MicroBatcher(3, 1.0, clock=lambda: 0.0)
    assert b.room() == 6
    b.add(0, [Rec(0, i) for i in range(5)])
    assert b.room() == 1 and b.ready()
    b.add(0, [Rec(0, 5), Rec(0, 6)])  # a caller that ignores room() is not refused
    assert b.room() == 0 and len(b) == 7


@pytest.mark.parametrize("size, wait", [(0, 0.1), (5, -1.0), (5, float("nan"))])
def test_bad_bounds_are_refused(size, wait):
    with pytest.raises(ConfigError):
        MicroBatcher(size, wait)
