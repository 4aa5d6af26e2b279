"""Local Apache Kafka: KRaft nodes on loopback (one by default, `DASHPIPE_KAFKA_BROKERS`
for more, each a combined broker and controller), run from its Maven Central jars.

The jars are resolved once with `mvn dependency:copy-dependencies` into
`<cache_dir>/kafka-<version>/libs`; the log lives in `<state_dir>/kafka/data` (one node) or
`<state_dir>/kafka/node-<id>/data` (several) and is formatted only the first time, so `down` +
`up` keeps every record. A node that died is started again by the next `up`.
"""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from dashpipe.cli.stack import maven
from dashpipe.cli.stack import state as st
from dashpipe.errors import StackError, ToolMissing
from dashpipe.settings import StackSettings

log = logging.getLogger(__name__)

MAIN_CLASS = "kafka.Kafka"
JAVA_HINT = "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)"
MVN_HINT = "install Maven to fetch Kafka from Maven Central (Debian: apt-get install maven)"


def need(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolMissing(tool, hint)
    return path


def libs_dir(stack: StackSettings, say: maven.Say = maven.stderr) -> Path:
    """The broker's classpath folder, resolved with Maven on first use (progress through
    `say`) and reused after."""
    home = stack.cache_dir.expanduser().resolve() / f"kafka-{stack.kafka_version}"
    libs = home / "libs"
    if (home / "complete").exists():
        return libs
    mvn = need("mvn", MVN_HINT)
    home.mkdir(parents=True, exist_ok=True)
    template = resources.files("dashpipe.cli.stack").joinpath("kafka-pom.xml").read_text()
    (home / "pom.xml").write_text(template.replace("@KAFKA_VERSION@", stack.kafka_version))
    staging = home / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    maven.resolve(mvn, home / "pom.xml", staging,
                  f"org.apache.kafka:kafka_2.13:{stack.kafka_version}", say)
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (home / "complete").write_text(stack.kafka_version)
    return libs


def classpath(stack: StackSettings) -> str:
    return str(libs_dir(stack) / "*")


def _cluster_id() -> str:
    """A random cluster id; one that starts with "-" would be read as an option."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found


def _write_config(home: Path, node: int, port: int, controller_port: int, voters: str,
                  nodes: int) -> Path:
    data = home / "data"
    props = home / "server.properties"
    rf = min(3, nodes)  # Kafka's internal topics replicated like ours
    home.mkdir(parents=True, exist_ok=True)
    props.write_text(
        "\n".join([
            "process.roles=broker,controller",
            f"node.id={node}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=1",
            f"offsets.topic.replication.factor={rf}",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={min(2, rf)}",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={min(2, rf)}",
            "group.initial.rebalance.delay.ms=0",
            "",
        ])
    )
    (home / "log4j2.properties").write_text(
        "\n".join([
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.file.ref = file",
            "appender.file.type = File",
            "appender.file.name = file",
            f"appender.file.fileName = {home / 'server.log'}",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "logger.kafka.name = kafka",
            "logger.kafka.level = INFO",
            "logger.state.name = state.change.logger",
            "logger.state.level = WARN",
            "",
        ])
    )
    return props


def _format(java: str, cp: str, props: Path, data: Path, cluster: str) -> None:
    if (data / "meta.properties").exists():
        return
    done = subprocess.run(
        [java, "-cp", cp, "kafka.tools.StorageTool", "format", "--ignore-formatted",
         "-t", cluster, "-c", str(props)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise StackError("formatting the Kafka log failed:\n" + (done.stdout + done.stderr)[-2000:])


def base(stack: StackSettings) -> Path:
    return stack.state_dir.resolve() / "kafka"


def homes(stack: StackSettings, nodes: int | None = None) -> list[Path]:
    """Each node's folder: `kafka/` itself for one node, `kafka/node-<id>` for several."""
    n = stack.kafka_brokers if nodes is None else nodes
    return [base(stack)] if n == 1 else [base(stack) / f"node-{i}" for i in range(1, n + 1)]


def _made_for(stack: StackSettings) -> int | None:
    """How many nodes the log on disk was formatted for (None: no log yet)."""
    root = base(stack)
    if (root / "data" / "meta.properties").exists():
        return 1
    made = sorted(root.glob("node-*/data/meta.properties"))
    return len(made) or None


def running_pid(home: Path) -> int | None:
    return st.read_pid(home / "pid", MAIN_CLASS)


def start(stack: StackSettings, state: st.StackState) -> st.StackState:
    """Start the nodes that do not run; returns the state with every node's ports."""
    made = _made_for(stack)
    n = stack.kafka_brokers if "kafka_brokers" in stack.model_fields_set else made or 1
    if made is not None and made != n:
        raise StackError(f"the local Kafka log was made for {made} node(s), not {n}: keep "
                         f"DASHPIPE_KAFKA_BROKERS={made}, or `dashpipe down --purge` first")
    nodes = homes(stack, n)
    known = state.kafka_ports or ([state.kafka_port] if state.kafka_port else [])
    known_c = state.controller_ports or ([state.controller_port] if state.controller_port else [])
    if len(known) == n and len(known_c) == n and all(running_pid(h) for h in nodes):
        return state.model_copy(update={"kafka_ports": known, "controller_ports": known_c})
    java = need("java", JAVA_HINT)
    cp = classpath(stack)
    taken: set[int] = set()
    ports: list[int] = []
    controllers: list[int] = []
    for i, home in enumerate(nodes):
        alive = running_pid(home) is not None and i < len(known) and i < len(known_c)
        for chosen, pool in ((ports, known), (controllers, known_c)):
            preferred = pool[i] if i < len(pool) else None
            port = preferred if alive and preferred else st.free_port(preferred)
            while port in taken:
                port = st.free_port()
            taken.add(port)
            chosen.append(port)
    voters = ",".join(f"{i}@127.0.0.1:{c}" for i, c in enumerate(controllers, 1))
    cluster = _shared_cluster_id(base(stack))
    for i, home in enumerate(nodes, 1):
        if running_pid(home):
            continue
        props = _write_config(home, i, ports[i - 1], controllers[i - 1], voters, n)
        _format(java, cp, props, home / "data", cluster)
        _launch(stack, java, cp, home, props)
    return state.model_copy(update={"kafka_port": ports[0], "controller_port": controllers[0],
                                    "kafka_ports": ports, "controller_ports": controllers})


def _shared_cluster_id(root: Path) -> str:
    """The cluster id every node is formatted with, kept beside the nodes."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cluster.id"
    if path.exists():
        return path.read_text().strip()
    cluster = _cluster_id()
    path.write_text(cluster)
    return cluster


def _launch(stack: StackSettings, java: str, cp: str, home: Path, props: Path) -> None:
    with open(home / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            [java, f"-Xmx{stack.kafka_heap}", f"-Xms{stack.kafka_heap}", "-XX:+UseG1GC",
             "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
             "-cp", cp, MAIN_CLASS, str(props)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (home / "pid").write_text(str(proc.pid))


def log_tail(stack: StackSettings, lines: int = 30) -> str:
    text = ""
    for home in homes(stack):
        for name in ("stdout.log", "server.log"):
            path = home / name
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    return text


def all_homes(stack: StackSettings) -> list[Path]:
    """Every node folder on disk, whatever the setting says now."""
    root = base(stack)
    return [root, *sorted(root.glob("node-*"))]


def stop(stack: StackSettings) -> bool:
    stopped = False
    for home in all_homes(stack):
        pid = running_pid(home)
        if pid is None:
            continue
        st.terminate(pid, timeout=60)
        (home / "pid").unlink(missing_ok=True)
        stopped = True
    return stopped
