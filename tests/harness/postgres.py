"""A real PostgreSQL server for the fleet store tests: Debian's binaries, a temporary cluster.

initdb into a temporary directory as an unprivileged user (nobody, when the tests run as root:
PostgreSQL refuses to run as root), a random loopback port, trust authentication on loopback
only; stop() and start() again on the same port and data (the outage tests); teardown kills it
whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path(os.environ.get("TRAFMETUX_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "trafmetux"  # the cluster's superuser and the daemons' role
DATABASE = "trafmetux"


def missing() -> str:
    """Why a PostgreSQL server cannot be started here, or ''."""
    for tool in ("initdb", "postgres", "pg_ctl"):
        if not (PG_BIN / tool).is_file():
            return f"the fleet store tests need PostgreSQL's {tool} in {PG_BIN} (make deps)"
    return ""


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """One temporary cluster; start(), stop(), url; destroy() at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "postgres.log"
        self._owner = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """The daemons' URL (no password: trust on loopback)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run_as(self) -> dict[str, object]:
        if self._owner is None:
            return {}
        return {"user": self._owner.pw_uid, "group": self._owner.pw_gid, "extra_groups": []}

    def init(self) -> None:
        """initdb the cluster (owned by the unprivileged user) and create the database."""
        for path in (self.root, self.data, self.sockets):
            path.mkdir(exist_ok=True)
            if self._owner is not None:
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        os.chmod(self.data, 0o700)
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, cwd=self.root, **self._run_as(),  # type: ignore[call-overload]
        )  # fmt: skip
        self.start()
        import psycopg

        with psycopg.connect(self.admin_url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def socket_url(self, database: str = DATABASE) -> str:
        """A URL over the server's Unix socket: reachable from inside a network namespace."""
        return f"postgresql://{USER}@/{database}?host={self.sockets}&port={self.port}"

    def new_database(self) -> str:
        """A URL to a fresh, empty database of the cluster."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.admin_url(name)

    def admin_url(self, database: str = DATABASE) -> str:
        """A URL to another database of the cluster."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (same data, same port) and wait until it accepts connections."""
        if self._owner is not None:
            with contextlib.suppress(FileNotFoundError):
                os.chown(self.log, self._owner.pw_uid, self._owner.pw_gid)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.sockets}",
                 "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=40"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, **self._run_as(),
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            if self._ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not start in {timeout}s: {self.log.read_text()[-2000:]}")

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.admin_url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        """Stop the server at once (fast shutdown: clients are cut, committed data stays)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Rows of one statement on the daemons' database."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return list(conn.execute(sql, params or None).fetchall())  # type: ignore[arg-type]

    def destroy(self) -> None:
        """Stop and delete everything."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(root: Path) -> Iterator[Postgres]:
    """A started cluster, stopped and deleted after even when the test failed."""
    server = Postgres(root)
    try:
        server.init()
        yield server
    finally:
        server.destroy()
