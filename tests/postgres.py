"""A real PostgreSQL server for tests: Debian's binaries (hack/install-postgres.sh), a fresh cluster
in a temporary directory, run as the ``postgres`` user (initdb refuses root).

The agent connects as ``tars_agent``, an ordinary role (no superuser, no BYPASSRLS), so row-level
security binds it exactly as it binds a production agent.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

AGENT_ROLE = "tars_agent"
AGENT_PASSWORD = "agent-secret"
DATABASE = "tars"


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make install` (hack/install-postgres.sh)")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        self.bin = postgres_bin()
        self.root = Path(root or tempfile.mkdtemp(prefix="tars-pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.root / "postgres.log"

    def _as_postgres(self) -> dict[str, object]:
        # Run as postgres directly (not through runuser), so signals reach the server itself.
        return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}

    def _run(self, *args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, cwd=self.root, **self._as_postgres())  # type: ignore[call-overload]

    def init(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        return self

    def start(self) -> PostgresServer:
        args = [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.root}",
        ]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(  # type: ignore[call-overload]
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root, **self._as_postgres()
            )
        deadline = time.monotonic() + 60
        while subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
        ).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def psql(self, sql: str, database: str = "postgres") -> None:
        self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                  "-v", "ON_ERROR_STOP=1", "-c", sql)  # fmt: skip

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{AGENT_ROLE}:{AGENT_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        """SIGINT is PostgreSQL's fast shutdown; SIGKILL stands for the machine dying."""
        if self.process is None:
            return
        self.process.send_signal(sig)
        self.process.wait(timeout=60)
        self.process = None

    def destroy(self) -> None:
        if self.process is not None:
            self.stop(signal.SIGKILL if self.process.poll() is None else signal.SIGINT)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server per test session; each test takes its own database (:func:`postgres_dsn`)."""
    server = PostgresServer().init().start()
    server.psql(f"CREATE ROLE {AGENT_ROLE} LOGIN PASSWORD '{AGENT_PASSWORD}' NOSUPERUSER NOBYPASSRLS")
    yield server
    server.destroy()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    name = f"tars_{uuid.uuid4().hex[:12]}"
    postgres_server.psql(f"CREATE DATABASE {name} OWNER {AGENT_ROLE}")
    return postgres_server.dsn(name)
