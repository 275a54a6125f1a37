"""Apache Kafka in KRaft single-node mode, from the official artifacts on Maven Central.

Maven resolves ``org.apache.kafka:kafka_2.13`` and its runtime dependencies into a cache directory
outside the repository (``~/.cache/router-stream/kafka-<version>``), once; later starts reuse it.
The broker runs on loopback with the machine's Java 17 as ``kafka.Kafka server.properties``.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from router_stream.stack.process import (
    StackError,
    pid_alive,
    port_open,
    read_pid,
    require_binary,
    stop_pid,
)

KAFKA_VERSION = "4.1.1"
# Kafka's server logs through slf4j 1.7; without a binding it logs nothing at all. The log4j2
# binding that matches the log4j-core Kafka 4.1 ships makes broker.log useful when a start fails.
_LOG4J_VERSION = "2.24.3"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.router-stream</groupId><artifactId>local-kafka</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2_CONFIG = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


@dataclass(frozen=True)
class KafkaConfig:
    state_dir: Path
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = 19092
    controller_port: int = 19093
    heap: str = "512m"
    version: str = KAFKA_VERSION

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}" / "libs"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "kafka" / "data"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "kafka" / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "kafka" / "broker.log"


def ensure_artifacts(cfg: KafkaConfig) -> Path:
    """Resolve the broker's jars with Maven, once. Returns the libs directory."""
    marker = cfg.libs_dir / ".complete"
    if marker.exists():
        return cfg.libs_dir
    mvn = require_binary("mvn", "install Maven (apt-get install maven) and Java 17")
    require_binary("java", "install Java 17 (apt-get install openjdk-17-jre-headless)")
    cfg.libs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_POM.format(kafka=cfg.version, log4j=_LOG4J_VERSION))
        cmd = [
            mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={cfg.libs_dir}", "-DincludeScope=runtime",
            f"-Dmaven.repo.local={cfg.cache_dir / 'm2'}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise StackError(f"Maven could not resolve Kafka {cfg.version}: {' | '.join(tail)}")
    marker.write_text(cfg.version)
    return cfg.libs_dir


def _server_properties(cfg: KafkaConfig) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{cfg.host}:{cfg.controller_port}",
        f"listeners=PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
        f"advertised.listeners=PLAINTEXT://{cfg.host}:{cfg.port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={cfg.data_dir}",
        "num.partitions=1",
        # Single node: internal topics cannot have more replicas than brokers.
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        # Tests create a fresh consumer group each; the default 3 s join delay would dominate.
        "group.initial.rebalance.delay.ms=0",
        # Topics are declared in topics/ and created by `topics apply`; auto-creation would hide a
        # missing declaration. Tests and faust create their topics explicitly too.
        "auto.create.topics.enable=false",
        "delete.topic.enable=true",
        "",
    ])


def _java_cmd(cfg: KafkaConfig, main: str, *args: str) -> list[str]:
    java = require_binary("java", "install Java 17 (apt-get install openjdk-17-jre-headless)")
    log_cfg = cfg.state_dir / "kafka" / "log4j2.properties"
    return [
        java, f"-Xmx{cfg.heap}", f"-Xms{cfg.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_cfg}", "-cp", f"{cfg.libs_dir}/*", main, *args,
    ]


def _format_storage(cfg: KafkaConfig, props: Path) -> None:
    if (cfg.data_dir / "meta.properties").exists():
        return
    cluster_id = str(uuid.uuid4().hex[:22])
    result = subprocess.run(
        _java_cmd(cfg, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise StackError(f"kafka storage format failed: {result.stderr.strip()[-400:]}")


def is_running(cfg: KafkaConfig) -> int | None:
    return read_pid(cfg.pid_file)


def start(cfg: KafkaConfig, timeout: float = 90.0) -> int:
    """Start the broker (or reuse the one this stack started) and wait until it answers."""
    running = is_running(cfg)
    if running is not None:
        wait_ready(cfg, timeout)
        return running
    if port_open(cfg.host, cfg.port):
        raise StackError(
            f"port {cfg.port} is taken by a process this stack did not start; "
            "stop it or choose --kafka-port"
        )
    ensure_artifacts(cfg)
    kdir = cfg.state_dir / "kafka"
    kdir.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(_server_properties(cfg))
    (kdir / "log4j2.properties").write_text(_LOG4J2_CONFIG.format(log=cfg.log_file))
    _format_storage(cfg, props)
    with open(kdir / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            _java_cmd(cfg, "kafka.Kafka", str(props)),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI process; stopped by pid via `down`
        )
    cfg.pid_file.write_text(f"{proc.pid}\n")
    try:
        wait_ready(cfg, timeout, pid=proc.pid)
    except StackError:
        stop_pid(proc.pid, timeout=5)
        raise
    return proc.pid


def wait_ready(cfg: KafkaConfig, timeout: float, pid: int | None = None) -> None:
    """Wait until the broker answers a metadata request (not merely accepts TCP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not pid_alive(pid):
            raise StackError(f"Kafka exited during start; see {cfg.log_file} and stdout.log")
        if port_open(cfg.host, cfg.port) and asyncio.run(_answers_metadata(cfg.bootstrap)):
            return
        time.sleep(0.25)
    raise StackError(f"Kafka did not answer metadata within {timeout:.0f}s; see {cfg.log_file}")


async def _answers_metadata(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return bool(cluster.get("brokers"))
    except Exception:  # noqa: BLE001 - any failure just means "not ready yet"
        return False
    finally:
        await admin.close()


def stop(cfg: KafkaConfig) -> bool:
    pid = is_running(cfg)
    if pid is None:
        return False
    stop_pid(pid, timeout=30)
    cfg.pid_file.unlink(missing_ok=True)
    return True
