"""bench/machine.py: finding the local broker's process and the machine's busy CPU."""

from __future__ import annotations

import os
import socket
import time

from bench import machine


def test_the_process_listening_on_a_loopback_bootstrap_is_the_broker() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert machine.local_broker_pid(f"127.0.0.1:{port},10.0.0.9:9092") == os.getpid()
        assert machine.local_broker_pid(f"localhost:{port}") == os.getpid()
    assert machine.local_broker_pid(f"127.0.0.1:{port}") is None  # nobody listens any more
    assert machine.local_broker_pid(f"kafka.example.com:{port}") is None  # not ours to read
    assert machine.local_broker_pid("127.0.0.1") is None


def test_busy_cpu_seconds_grow_with_work() -> None:
    before = machine.busy_cpu_seconds()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert machine.busy_cpu_seconds() - before >= 0.1
