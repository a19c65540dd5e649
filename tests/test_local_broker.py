"""`stream-ae broker`: the embedded broker with the topics the settings name, to try `serve`
on one machine (session 36's new-user review: nothing said how to get a broker and topics for
it without a cluster). It prints the serve command and stops the broker on SIGTERM or Ctrl-C."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stream_ae.stream.broker import BrokerUnavailable, tansu_binary
from test_broker import _tansu_pids, _wait_gone

pytestmark = pytest.mark.slow
STREAM_AE = str(Path(sys.executable).with_name("stream-ae"))


@pytest.fixture
def tansu():
    try:
        return tansu_binary()
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_it_creates_the_settings_topics_prints_serve_and_stops_clean(tansu, tmp_path, how):
    from kafka import KafkaConsumer

    config = tmp_path / "s.toml"
    config.write_text('[kafka]\nreadings_topic = "plant"\nstate_topic = "plant.state"\n')
    proc = subprocess.Popen([STREAM_AE, "broker", "--config", str(config), "--partitions", "3",
                             "--set", "kafka.alerts_topic=plant.alerts"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        bootstrap = text.split("embedded broker at ")[1].split()[0]
        assert f"stream-ae serve --config {config} --set kafka.bootstrap_servers={bootstrap}" in text
        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        try:
            described = {t: len(consumer.partitions_for_topic(t) or ()) for t in consumer.topics()}
        finally:
            consumer.close()
        assert described == {"plant": 3, "plant.state": 3, "plant.alerts": 1, "readings.dead-letter": 1}
        pids = _tansu_pids(bootstrap)
        assert pids
        proc.send_signal(how)
        out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0 and "Traceback" not in out
        assert not _wait_gone(pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_partition_count_below_one_is_refused(capsys):
    from stream_ae.cli import main

    assert main(["broker", "--partitions", "0"]) == 2
    assert "--partitions must be at least 1" in capsys.readouterr().err
