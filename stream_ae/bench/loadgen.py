"""The load generator of ``stream-ae bench stream`` (c): readings paced at a fixed rate from
another process, standing in for the plant's devices."""
from __future__ import annotations

import time
from pathlib import Path

GENERATOR_LINGER_MS = 5  # the load generator's batching: counted in the latency (CreateTime is set at send)


def load_generator() -> str:
    """Which client paces the readings in (c): ``confluent-kafka`` when installed (the ``bench``
    extra), else kafka-python. At 24 k msg/s on the 2-core machine, kafka-python's producer took
    0.6 of a core and the broker 0.1; confluent-kafka took 0.11 and the broker 0.13 -- CPU the
    detector under test would otherwise lose to its own load generator."""
    try:
        import confluent_kafka
    except ImportError:
        return "kafka-python"
    return f"confluent-kafka {confluent_kafka.__version__}"


def paced_producer(bootstrap: str, topic: str, path: str, rate: float, warm_topic: str, span=None) -> None:
    """Child process body: send the messages in ``path`` at ``rate`` per second (acks=all,
    idempotent, keys partitioned with murmur2 as the Java client and kafka-python do).

    One record to ``warm_topic`` is delivered first, so the connection and the idempotent
    producer id are set up before the first reading's CreateTime is stamped. ``span``: a
    shared array of two doubles that receives the wall-clock time of the first send and of
    the last acknowledgement, so the caller measures the rate the readings were delivered at
    (the child's start-up, a second or more, is not part of it)."""
    import msgspec

    msgs = msgspec.msgpack.decode(Path(path).read_bytes())
    if load_generator() == "kafka-python":
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=GENERATOR_LINGER_MS)

        def send(k, v, to=topic):
            producer.send(to, key=k, value=v)

        def serve():  # its sender thread serves acknowledgements
            pass

        def flush(close=True):
            producer.flush()
            if close:
                producer.close()
    else:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                             "linger.ms": GENERATOR_LINGER_MS, "partitioner": "murmur2_random"})

        def send(k, v, to=topic):
            while True:
                try:
                    return producer.produce(to, value=v, key=k)
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.005)

        def serve():  # delivery reports are served on poll
            producer.poll(0)

        def flush(close=True):
            if producer.flush(60):
                raise RuntimeError("the load generator could not deliver every reading in 60 s")
    send(b"warm-up", b"{}", warm_topic)
    flush(close=False)
    if span is not None:
        span[0] = time.time()
    start, i = time.perf_counter(), 0
    while i < len(msgs):
        due = min(int((time.perf_counter() - start) * rate) + 1, len(msgs))
        for k, v in msgs[i:due]:
            send(k, v)
        serve()
        i = due
        time.sleep(0.002)
    flush()
    if span is not None:
        span[1] = time.time()
