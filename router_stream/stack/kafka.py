"""Apache Kafka in KRaft single-node mode, from the official artifacts on Maven Central.

Maven resolves ``org.apache.kafka:kafka_2.13`` and its runtime dependencies into a cache directory
outside the repository (``~/.cache/router-stream/kafka-<version>``), once; later starts reuse it.
The broker runs on loopback with the machine's Java 17 as ``kafka.Kafka server.properties``.

With ``secure=True`` (``stack up --secure``) the client listener is SASL_SSL (SCRAM-SHA-512,
SCRAM-SHA-256 and PLAIN) with a certificate from :mod:`router_stream.stack.security`; the broker
talks to itself over that same listener as its own SCRAM user. The KRaft controller listener
(loopback, not advertised) is SASL_SSL too, with PLAIN and the one user ``broker`` (KRaft
controllers cannot use SCRAM: its credentials live in the metadata log they serve), so no port
of the stack answers an unauthenticated request — on loopback, binding alone would leave the
controller's admin APIs (DescribeConfigs, IncrementalAlterConfigs …) open to every local user.
SCRAM credentials are written into the metadata log at format time (``StorageTool format
--add-scram``), from a 0600 argument file rather than the command line.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from router_stream.stack import security
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
INDEX_BYTES = 1024 * 1024
"""``log.index.size.max.bytes`` of the stack's broker (Kafka's default: 10 MiB)."""

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
    secure: bool = False

    @property
    def security_protocol(self) -> str:
        return "SASL_SSL" if self.secure else "PLAINTEXT"

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

    @property
    def security_marker(self) -> Path:
        """Written at format time: the storage holds SCRAM users for a SASL_SSL listener."""
        return self.state_dir / "kafka" / "formatted-secure"


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


def _server_properties(
    cfg: KafkaConfig,
    secrets: security.StackSecrets | None = None,
    tls: security.TlsFiles | None = None,
) -> str:
    name = cfg.security_protocol
    controller = "SASL_SSL" if cfg.secure else "PLAINTEXT"
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{cfg.host}:{cfg.controller_port}",
        f"listeners={name}://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
        f"advertised.listeners={name}://{cfg.host}:{cfg.port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={name}",
        f"listener.security.protocol.map={name}:{name},CONTROLLER:{controller}",
        *(_secure_properties(secrets, tls) if cfg.secure and secrets and tls else []),
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
        # Each partition's offset and time indexes are sparse files mapped into memory at this
        # size. The first access to one reads it around the fault, as far as the disk's
        # read-ahead reaches (8 MiB on some VMs), and the kernel zero-fills every page read from
        # a hole: at Kafka's default of 10 MiB that is up to 8 MiB zeroed per new partition written
        # (docs/performance.md). 1 MiB still indexes ~350 MiB of log per segment.
        f"log.index.size.max.bytes={INDEX_BYTES}",
        "",
    ])


SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
_SCRAM = "org.apache.kafka.common.security.scram.ScramLoginModule required"
_PLAIN = "org.apache.kafka.common.security.plain.PlainLoginModule required"


def _secure_properties(secrets: security.StackSecrets, tls: security.TlsFiles) -> list[str]:
    """SASL_SSL for clients and for the broker itself (these lines hold passwords: file 0600)."""
    prefix = "listener.name.sasl_ssl"
    broker_login = (f'username="{security.BROKER_USER}" '
                    f'password="{secrets.broker_password}";')
    return [
        f"sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f"{prefix}.scram-sha-512.sasl.jaas.config={_SCRAM} {broker_login}",
        f"{prefix}.scram-sha-256.sasl.jaas.config={_SCRAM};",
        # PLAIN's users live in the JAAS line itself (SCRAM's in the metadata log).
        f'{prefix}.plain.sasl.jaas.config={_PLAIN} '
        f'user_{security.CLIENT_USER}="{secrets.kafka_password}";',
        # The controller listener: PLAIN over TLS, one user, the broker itself (client and server
        # side of the same JAAS line).
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={_PLAIN} "
        f'username="{security.BROKER_USER}" password="{secrets.broker_password}" '
        f'user_{security.BROKER_USER}="{secrets.broker_password}";',
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={tls.keystore}",
        f"ssl.keystore.password={secrets.keystore_password}",
        f"ssl.key.password={secrets.keystore_password}",
        # The broker is a TLS client of itself (inter-broker): it trusts the stack's CA.
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={tls.ca_cert}",
        "ssl.client.auth=none",
        "ssl.enabled.protocols=TLSv1.3,TLSv1.2",
    ]


def _scram_arguments(secrets: security.StackSecrets) -> list[str]:
    users = [(security.CLIENT_USER, secrets.kafka_password, "SCRAM-SHA-512"),
             (security.CLIENT_USER, secrets.kafka_password, "SCRAM-SHA-256"),
             (security.BROKER_USER, secrets.broker_password, "SCRAM-SHA-512")]
    args: list[str] = []
    for user, password, mechanism in users:
        args += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    return args


def _java_cmd(cfg: KafkaConfig, main: str, *args: str) -> list[str]:
    java = require_binary("java", "install Java 17 (apt-get install openjdk-17-jre-headless)")
    log_cfg = cfg.state_dir / "kafka" / "log4j2.properties"
    return [
        java, f"-Xmx{cfg.heap}", f"-Xms{cfg.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_cfg}", "-cp", f"{cfg.libs_dir}/*", main, *args,
    ]


def check_storage_matches(cfg: KafkaConfig) -> None:
    """A plaintext stack's storage has no SCRAM users; refuse to mix the two modes."""
    if not (cfg.data_dir / "meta.properties").exists():
        return
    formatted_secure = cfg.security_marker.exists()
    if formatted_secure != cfg.secure:
        held = "a --secure" if formatted_secure else "a plaintext"
        raise StackError(
            f"{cfg.state_dir} holds {held} stack; use another --state-dir "
            "(ROUTER_STACK_DIR) or `router-stream stack down --wipe` first"
        )


def _format_storage(
    cfg: KafkaConfig, props: Path, secrets: security.StackSecrets | None = None
) -> None:
    if (cfg.data_dir / "meta.properties").exists():
        return
    cluster_id = str(uuid.uuid4().hex[:22])
    tool_args = ["format", "-t", cluster_id, "-c", str(props)]
    if secrets is None:
        cmd = _java_cmd(cfg, "kafka.tools.StorageTool", *tool_args)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    else:
        result = _run_with_argfile(
            cfg, ["kafka.tools.StorageTool", *tool_args, *_scram_arguments(secrets)]
        )
    if result.returncode != 0:
        raise StackError(f"kafka storage format failed: {result.stderr.strip()[-400:]}")
    if secrets is not None:
        cfg.security_marker.write_text("SASL_SSL\n")


def _run_with_argfile(
    cfg: KafkaConfig, main_and_args: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``java … @file``: the launcher reads the main class and its arguments (passwords
    included) from a 0600 file, so they never appear in the process table."""
    argfile = cfg.state_dir / "kafka" / "format.args"
    security.write_private(argfile, "\n".join(f'"{a}"' for a in main_and_args) + "\n")
    jvm = _java_cmd(cfg, "MAIN")[:-1]  # java, JVM options and class path, without a main class
    try:
        return subprocess.run([*jvm, f"@{argfile}"], capture_output=True, text=True,
                              check=False)
    finally:
        argfile.unlink(missing_ok=True)


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
    check_storage_matches(cfg)
    props = kdir / "server.properties"
    secrets = security.ensure_secrets(cfg.state_dir) if cfg.secure else None
    tls = security.ensure_tls(cfg.state_dir, secrets) if secrets else None
    # 0600: in secure mode the file holds the keystore and JAAS passwords.
    security.write_private(props, _server_properties(cfg, secrets, tls))
    (kdir / "log4j2.properties").write_text(_LOG4J2_CONFIG.format(log=cfg.log_file))
    _format_storage(cfg, props, secrets)
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
        if port_open(cfg.host, cfg.port) and _answers_metadata(client_config(cfg)):
            return
        time.sleep(0.25)
    raise StackError(f"Kafka did not answer metadata within {timeout:.0f}s; see {cfg.log_file}")


def client_config(cfg: KafkaConfig) -> dict[str, str]:
    """librdkafka settings for this stack's broker (the stack's own CA and client user if
    secure)."""
    conf = {"bootstrap.servers": cfg.bootstrap}
    if cfg.secure:
        secrets = security.load_secrets(cfg.state_dir)
        conf |= {
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(security.tls_files(cfg.state_dir).ca_cert),
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": security.CLIENT_USER,
            "sasl.password": secrets.kafka_password,
        }
    return conf


def _answers_metadata(conf: dict[str, str]) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # a broker that is still starting fails connections: not worth a log line
    admin = AdminClient({**conf, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=3).brokers)
    except KafkaException:
        return False


def stop(cfg: KafkaConfig) -> bool:
    pid = is_running(cfg)
    if pid is None:
        return False
    stop_pid(pid, timeout=30)
    cfg.pid_file.unlink(missing_ok=True)
    return True
