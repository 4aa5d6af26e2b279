"""Progress of the first `dashpipe up` while Maven resolves Kafka's jars: the line function on
Maven's real output, and `libs_dir` with a stand-in `mvn` (the real Maven cache is not touched)."""

import os
from pathlib import Path

import pytest

from dashpipe.cli.stack import kafka, maven
from dashpipe.errors import StackError
from dashpipe.settings import StackSettings

REPO = "https://repo.maven.apache.org/maven2/org"
GOT = "[INFO] Downloaded from central:"
# lines as Maven 3.8 prints them in batch mode (captured from a real run)
OUTPUT = "\n".join([
    "[INFO] Scanning for projects...",
    f"[INFO] Downloading from central: {REPO}/slf4j/slf4j-api/2.0.13/slf4j-api-2.0.13.pom",
    f"{GOT} {REPO}/slf4j/slf4j-api/2.0.13/slf4j-api-2.0.13.pom (2.8 kB at 22 kB/s)",
    f"[INFO] Downloading from central: {REPO}/slf4j/slf4j-api/2.0.13/slf4j-api-2.0.13.jar",
    f"{GOT} {REPO}/slf4j/slf4j-nop/2.0.13/slf4j-nop-2.0.13.jar (4.9 kB at 17 kB/s)",
    f"\x1b[0m{GOT} {REPO}/apache/kafka/kafka_2.13/4.1.1/kafka_2.13-4.1.1.jar (6.6 MB at "
    "3.1 MB/s)",
    "[INFO] --- maven-dependency-plugin:2.8:copy-dependencies (default-cli) @ probe ---",
    "[INFO] Copying slf4j-nop-2.0.13.jar to /tmp/out/slf4j-nop-2.0.13.jar",
    "[INFO] BUILD SUCCESS",
]) + "\n"


def test_one_line_per_downloaded_jar_with_running_totals() -> None:
    progress = maven.Progress()
    shown = [line for line in map(progress.feed, OUTPUT.splitlines()) if line is not None]
    assert shown == [
        "  slf4j-nop-2.0.13.jar 4.9 kB (1 jars, 7.7 kB downloaded)",
        "  kafka_2.13-4.1.1.jar 6.6 MB (2 jars, 6.6 MB downloaded)",
    ]
    assert (progress.jars, progress.copied) == (2, 1)
    assert progress.downloaded == pytest.approx(2800 + 4900 + 6.6e6)


def test_sizes() -> None:
    assert [maven.size(n) for n in (12, 7_700, 6_607_700, 2.5e9)] == [
        "12 B", "7.7 kB", "6.6 MB", "2.5 GB"]


def fake_mvn(folder: Path, exit_code: int = 0) -> None:
    """An `mvn` that prints Maven's lines and copies two jars into -DoutputDirectory."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "output.txt").write_text(OUTPUT)
    script = folder / "mvn"
    script.write_text(f"""#!/bin/sh
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${{arg#-DoutputDirectory=}}";; esac
done
cat "{folder / 'output.txt'}"
mkdir -p "$out" && printf 'jar' > "$out/a.jar" && printf 'jar!' > "$out/b.jar"
exit {exit_code}
""")
    script.chmod(0o755)


def test_first_resolution_says_what_and_how_much_then_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mvn(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    stack = StackSettings(cache_dir=tmp_path / "cache", kafka_version="4.1.1")
    said: list[str] = []
    libs = kafka.libs_dir(stack, said.append)
    assert sorted(p.name for p in libs.iterdir()) == ["a.jar", "b.jar"]
    assert said[0].startswith("resolving org.apache.kafka:kafka_2.13:4.1.1 and its "
                              "dependencies with mvn")
    assert said[1:3] == ["  slf4j-nop-2.0.13.jar 4.9 kB (1 jars, 7.7 kB downloaded)",
                         "  kafka_2.13-4.1.1.jar 6.6 MB (2 jars, 6.6 MB downloaded)"]
    assert said[3] == ("resolved 2 jars (7 B); 2 downloaded, the rest from the local Maven "
                       "repository")
    said.clear()
    assert kafka.libs_dir(stack, said.append) == libs
    assert said == []  # cached: silent


def test_a_failed_resolution_shows_mavens_last_lines(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mvn(tmp_path / "bin", exit_code=1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(StackError, match=r"mvn could not resolve org\.apache\.kafka:kafka_2\.13"):
        kafka.libs_dir(StackSettings(cache_dir=tmp_path / "cache"), lambda line: None)
    assert not (tmp_path / "cache" / "kafka-4.1.1" / "complete").exists()
