"""Apache Kafka's broker jars from Maven Central, resolved once into a project-local cache.

One `mvn dependency:copy-dependencies` on a generated `packaging=pom` project gives a
`lib/` equivalent to the release tarball's `libs/`: the broker's runtime classpath plus
the log4j2 backend and SLF4J binding the tarball adds by hand. The folder is complete
only once its marker exists (written last, after an atomic rename), and later runs make
no network call at all. Concurrent first runs (xdist workers, two terminals) take a file
lock, so only one downloads.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
"""4.3.1: the newest release whose test kit also resolves from Maven Central (KAFKA.md)."""
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.25.3"
"""Kafka 4.3 builds with log4j 2.25.x."""
MIN_JAVA = 17
_MARKER = ".complete"
_RESOLVE_TIMEOUT_SECONDS = 900.0
_REPO_ROOT = Path(__file__).resolve().parent.parent


class KafkaRuntimeError(RuntimeError):
    """Java, Maven or the jars are missing, or a broker would not start."""


def cache_root() -> Path:
    """`STEADFAST_CACHE_DIR`, else `<repo>/.steadfast/cache` (shared by every state dir)."""
    explicit = os.environ.get("STEADFAST_CACHE_DIR")
    return Path(explicit) if explicit else _REPO_ROOT / ".steadfast" / "cache"


def java_executable() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def java_major(java: str | None = None) -> int | None:
    """The major version of `java` (17 for "17.0.15"), or None when there is none."""
    exe = java or java_executable()
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def java_ok() -> bool:
    major = java_major()
    return major is not None and major >= MIN_JAVA


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.steadfast</groupId>
  <artifactId>kafka-broker-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>org.apache.logging.log4j</groupId>
        <artifactId>log4j-bom</artifactId>
        <version>{log4j}</version>
        <type>pom</type>
        <scope>import</scope>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
    </dependency>
  </dependencies>
</project>
"""


@dataclass(frozen=True)
class KafkaJars:
    """The jars of one pinned Kafka version under `<cache>/kafka-<version>/lib`."""

    version: str = KAFKA_VERSION
    cache: Path | None = None

    @property
    def home(self) -> Path:
        return (self.cache or cache_root()) / f"kafka-{self.version}"

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def classpath(self) -> str:
        return str(self.lib / "*")

    def present(self) -> bool:
        return (self.lib / _MARKER).exists()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.lib.glob("*.jar"))

    def ensure(self) -> Path:
        """The lib folder, resolving it with Maven first if this is the first use."""
        if self.present():
            return self.lib
        self.home.parent.mkdir(parents=True, exist_ok=True)
        with (self.home.parent / f"kafka-{self.version}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be resolving right now
            if not self.present():
                self._resolve()
        return self.lib

    def _resolve(self) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaRuntimeError(
                "Apache Kafka needs Maven to fetch its jars once (apt-get install maven), "
                "or set STEADFAST_BROKER=noida to use the PyPI stand-in"
            )
        started = time.monotonic()
        log.info(
            "resolving Apache Kafka %s from Maven Central into %s (first use only)",
            self.version,
            self.lib,
            extra={"event.action": "kafka_jars_resolving"},
        )
        with tempfile.TemporaryDirectory(prefix="kafka-jars-", dir=self.home.parent) as tmp:
            work = Path(tmp)
            (work / "pom.xml").write_text(
                _POM.format(kafka=self.version, scala=SCALA_VERSION, log4j=LOG4J_VERSION)
            )
            lib = work / "lib"
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(work / "pom.xml"),
                # A private local repository: nothing is read from or left in ~/.m2.
                f"-Dmaven.repo.local={work / 'm2'}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={lib}",
            ]
            try:
                result = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    timeout=_RESOLVE_TIMEOUT_SECONDS,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise KafkaRuntimeError(
                    f"mvn did not resolve Kafka {self.version} in {_RESOLVE_TIMEOUT_SECONDS:.0f}s"
                ) from exc
            jars = sorted(p.name for p in lib.glob("*.jar")) if lib.is_dir() else []
            if result.returncode != 0 or not any(j.startswith("kafka_") for j in jars):
                tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
                raise KafkaRuntimeError(f"mvn could not resolve Kafka {self.version}:\n{tail}")
            if self.lib.exists():  # a partial folder from an interrupted earlier run
                shutil.rmtree(self.lib)
            self.home.mkdir(parents=True, exist_ok=True)
            lib.rename(self.lib)
        (self.lib / _MARKER).write_text("\n".join(jars) + "\n")
        log.info(
            "Apache Kafka %s resolved in %.1fs: %d jars, %.0f MiB",
            self.version,
            time.monotonic() - started,
            len(jars),
            self.size_bytes() / 2**20,
            extra={"event.action": "kafka_jars_resolved"},
        )
