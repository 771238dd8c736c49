"""Debian's rsyslog as a real syslog receiver: imtcp on a loopback port, plain or TLS with a
test CA, writing what it receives (MSGID, structured data, message) to a file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
GTLS = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")
START_LIMIT_S = 20.0
# One line per message: the message id, its structured data and body, as received.
TEMPLATE = "%msgid% %structured-data% %msg%\\n"


def missing() -> str | None:
    """Why rsyslog tests cannot run here, or None."""
    if not Path(RSYSLOGD).exists():
        return "no rsyslogd: `make test` installs rsyslog as root (apt-get install rsyslog)"
    return None


def missing_tls() -> str | None:
    """Why rsyslog TLS tests cannot run here, or None."""
    if not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
        return "no rsyslog GnuTLS driver: `make test` installs rsyslog-gnutls as root"
    return missing()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 and localhost: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auditq test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    os.chmod(paths[2], 0o600)
    return paths


class Rsyslog:
    """One rsyslogd of the test's own, on a loopback port, writing to `output`."""

    def __init__(self, directory: Path, *, tls: bool) -> None:
        self.directory = directory
        self.tls = tls
        self.port = free_port()
        self.output = directory / "received.log"
        self.config = directory / "rsyslog.conf"
        self.pidfile = directory / "rsyslogd.pid"
        self.ca: Path | None = None
        self.process: asyncio.subprocess.Process | None = None
        (directory / "work").mkdir(exist_ok=True)
        lines = [
            f'global(workDirectory="{directory / "work"}" maxMessageSize="256k"',
        ]
        if tls:
            self.ca, cert, key = make_ca(directory)
            lines[0] += (
                f' defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{self.ca}"'
                f' defaultNetstreamDriverCertFile="{cert}"'
                f' defaultNetstreamDriverKeyFile="{key}"'
            )
        lines[0] += ")"
        if tls:
            lines.append(
                'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" '
                'streamDriver.authMode="anon")'
            )
        else:
            lines.append('module(load="imtcp")')
        lines += [
            f'template(name="received" type="string" string="{TEMPLATE}")',
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}")',
            f'action(type="omfile" file="{self.output}" template="received" flushOnTXEnd="on" '
            'asyncWriting="off")',
        ]
        self.config.write_text("\n".join(lines) + "\n")

    def url(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with (self.directory / "rsyslogd.out").open("ab") as log:  # the child keeps its own
            self.process = await asyncio.create_subprocess_exec(
                RSYSLOGD,
                "-n",
                "-f",
                str(self.config),
                "-i",
                str(self.pidfile),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            if self.process.returncode is not None or time.monotonic() > deadline:
                out = (self.directory / "rsyslogd.out").read_text(errors="replace")
                raise AssertionError(f"rsyslogd did not start: {out}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 20)
        self.process = None

    def lines(self) -> list[str]:
        try:
            return self.output.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []


@contextlib.asynccontextmanager
async def stopped_at_exit(server: Rsyslog) -> AsyncIterator[Rsyslog]:
    """Make sure the rsyslogd this test started is gone when the test ends."""
    try:
        yield server
    finally:
        if server.process is not None and server.process.returncode is None:
            server.process.kill()
            await asyncio.wait_for(server.process.wait(), 10)
