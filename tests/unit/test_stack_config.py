"""The local stack's pure parts: configuration, broker properties, missing-tool errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_stream.stack import kafka, manager
from router_stream.stack.process import MissingTool, pid_alive, read_pid, require_binary


def test_missing_binary_names_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingTool, match="apt-get install maven"):
        require_binary("mvn", "install Maven (apt-get install maven) and Java 17")


def test_env_points_at_loopback_ports(tmp_path: Path):
    cfg = manager.make_config(tmp_path / "state", tmp_path / "cache", kafka_port=29092, pg_port=25432)
    assert cfg.env == {
        "ROUTER_KAFKA_BOOTSTRAP": "127.0.0.1:29092",
        "ROUTER_DATABASE_URL": "postgresql://router@127.0.0.1:25432/router",
    }
    assert cfg.kafka.controller_port == 29093


def test_broker_properties_are_single_node_kraft_on_loopback(tmp_path: Path):
    cfg = kafka.KafkaConfig(state_dir=tmp_path, cache_dir=tmp_path, port=29092, controller_port=29093)
    props = dict(
        line.split("=", 1) for line in kafka._server_properties(cfg).splitlines() if line
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    # small sparse index files: a new partition's first index access zero-fills at most this
    assert props["log.index.size.max.bytes"] == str(1024 * 1024)


def test_stale_pid_file_is_not_a_running_process(tmp_path: Path):
    pid_file = tmp_path / "x.pid"
    pid_file.write_text("999999999\n")
    assert read_pid(pid_file) is None
    assert not pid_alive(999999999)
