"""Local Apache Kafka: one KRaft broker on loopback, run from its Maven Central jars.

The jars are resolved once with `mvn dependency:copy-dependencies` into
`<cache_dir>/kafka-<version>/libs`; the log lives in `<state_dir>/kafka/data`
and is formatted only the first time, so `down` + `up` keeps every record.
"""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

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


def libs_dir(stack: StackSettings) -> Path:
    """The broker's classpath folder, resolved with Maven on first use and reused after."""
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
    log.info("resolving Apache Kafka %s from Maven Central into %s", stack.kafka_version, libs)
    done = subprocess.run(
        [mvn, "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise StackError(
            f"mvn could not resolve org.apache.kafka:kafka_2.13:{stack.kafka_version}:\n"
            + (done.stdout + done.stderr)[-2000:]
        )
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


def _write_config(home: Path, port: int, controller_port: int) -> Path:
    data = home / "data"
    props = home / "server.properties"
    props.write_text(
        "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
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


def _format(java: str, cp: str, props: Path, data: Path) -> None:
    if (data / "meta.properties").exists():
        return
    done = subprocess.run(
        [java, "-cp", cp, "kafka.tools.StorageTool", "format", "--ignore-formatted",
         "-t", _cluster_id(), "-c", str(props)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise StackError("formatting the Kafka log failed:\n" + (done.stdout + done.stderr)[-2000:])


def running_pid(home: Path) -> int | None:
    return st.read_pid(home / "pid", MAIN_CLASS)


def start(stack: StackSettings, state: st.StackState) -> st.StackState:
    """Start the broker unless it already runs; returns the state with its ports."""
    home = stack.state_dir.resolve() / "kafka"
    if running_pid(home) and state.kafka_port:
        return state
    java = need("java", JAVA_HINT)
    cp = classpath(stack)
    home.mkdir(parents=True, exist_ok=True)
    port = st.free_port(state.kafka_port)
    controller = st.free_port(state.controller_port)
    if controller == port:
        controller = st.free_port()
    props = _write_config(home, port, controller)
    _format(java, cp, props, home / "data")
    with open(home / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            [java, f"-Xmx{stack.kafka_heap}", f"-Xms{stack.kafka_heap}", "-XX:+UseG1GC",
             "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
             "-cp", cp, MAIN_CLASS, str(props)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (home / "pid").write_text(str(proc.pid))
    return state.model_copy(update={"kafka_port": port, "controller_port": controller})


def log_tail(stack: StackSettings, lines: int = 30) -> str:
    home = stack.state_dir.resolve() / "kafka"
    text = ""
    for name in ("stdout.log", "server.log"):
        path = home / name
        if path.exists():
            text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    return text


def stop(stack: StackSettings) -> bool:
    home = stack.state_dir.resolve() / "kafka"
    pid = running_pid(home)
    if pid is None:
        return False
    st.terminate(pid, timeout=60)
    (home / "pid").unlink(missing_ok=True)
    return True
