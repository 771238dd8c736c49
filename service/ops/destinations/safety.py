"""Where a destination may point: not at link-local or cloud-metadata addresses, nor at
private, loopback or other non-public ones, unless the destination allows private addresses.

Checked when a destination is added or changed, and again at every connection (the name is
resolved then, and each address it resolves to is checked: a name that later resolves
somewhere else is refused then, not trusted from its first answer).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from service.redaction import is_sensitive_key

URL_SCHEMES = {
    "webhook": ("https", "http"),
    "splunk-hec": ("https", "http"),
    "elasticsearch": ("https", "http"),
    "syslog": ("tls", "tcp", "syslog+tls", "syslog+tcp"),
}
# Cloud instance metadata services, beside all of 169.254.0.0/16 and fe80::/10.
METADATA = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS over IPv6
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud
    ipaddress.ip_network("192.0.0.192/32"),  # Oracle Cloud
)


class UnsafeDestination(ValueError):
    """A destination URL that may not be used (the message says why)."""


def check_address(address: str, *, allow_private: bool) -> None:
    """Refuse an address a destination may not reach."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    if ip.is_unspecified or ip.is_multicast:
        raise UnsafeDestination(f"{address} is not an address a destination can use")
    if allow_private:
        return
    if any(ip in net for net in METADATA):
        raise UnsafeDestination(
            f"{address} is link-local or a cloud metadata address: allow it with --allow-private"
        )
    if not ip.is_global:
        raise UnsafeDestination(
            f"{address} is a private or loopback address: allow it with --allow-private"
        )


def check_url(kind: str, url: str, *, allow_private: bool) -> tuple[str, str, int]:
    """Check a URL's form and, when it names an address, that address; (scheme, host, port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeDestination(f"the URL is malformed: {exc}") from None
    schemes = URL_SCHEMES[kind]
    if parts.scheme not in schemes:
        allowed = " or ".join(f"{scheme}://" for scheme in schemes)
        raise UnsafeDestination(f"a {kind} URL starts with {allowed}")
    host = parts.hostname
    if not host:
        raise UnsafeDestination("the URL names no host")
    if (
        parts.username
        or parts.password
        or any(is_sensitive_key(key) for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    ):  # a URL is shown to readers and logged: a credential in it would be too
        raise UnsafeDestination("put credentials in --secret-file, not in the URL")
    if port is None:
        if kind == "syslog":
            port = 6514 if "tls" in parts.scheme else 514
        else:
            port = 443 if parts.scheme == "https" else 80
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return parts.scheme, host, port  # a name: checked on every connection
    check_address(host, allow_private=allow_private)
    return parts.scheme, host, port


async def resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses of `host`, every one checked; raise UnsafeDestination for any refused."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        check_address(address, allow_private=allow_private)
    return addresses


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing every answer a destination may not reach."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: Any = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(result["host"], allow_private=self._allow_private)
        return results

    async def close(self) -> None:
        await self._inner.close()
