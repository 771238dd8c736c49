"""Where a destination may not point: a name that resolves to a loopback, private or metadata
address is refused when it connects (not only when it is added), a redirect is not followed,
and TLS is verified by default."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from service.ops.destinations.probe import send_test
from service.ops.destinations.safety import UnsafeDestination, check_address, check_url
from service.store.destinations import Destination, Position
from tests.destinations.receivers import Receiver


def destination(kind: str, url: str, **options: object) -> Destination:
    now = datetime.now(UTC)
    return Destination(
        id=1,
        name="d",
        kind=kind,
        url=url,
        format="json",
        filter="",
        filter_json={},
        options=dict(options),
        paused=False,
        created_at=now,
        created_by="test",
        updated_at=now,
        position=Position("1", -1),
        delivered_total=0,
        failed_attempts_total=0,
        consecutive_failures=0,
        last_delivered_at=None,
        last_error=None,
        last_error_at=None,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as running:
        yield running


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
        "fe80::1",
        "100.100.100.200",
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "::1",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str) -> None:
    with pytest.raises(UnsafeDestination):
        check_address(address, allow_private=False)


def test_allow_private_allows_them_but_never_the_unspecified_address() -> None:
    check_address("169.254.169.254", allow_private=True)
    check_address("127.0.0.1", allow_private=True)
    with pytest.raises(UnsafeDestination):
        check_address("0.0.0.0", allow_private=True)
    check_address("93.184.215.14", allow_private=False)
    assert check_url("syslog", "tls://logs.example.com", allow_private=False)[2] == 6514


async def test_a_name_resolving_to_loopback_is_refused_at_connection(receiver: Receiver) -> None:
    url = f"http://localhost:{receiver.server.port}/hook"
    check_url("webhook", url, allow_private=False)  # a name: nothing to refuse yet
    result = await send_test(destination("webhook", url), None, actor="t")
    assert not result.delivered and "refused" in (result.error or "")
    assert receiver.items == []
    syslog = await send_test(destination("syslog", "tcp://localhost:9"), None, actor="t")
    assert not syslog.delivered and "private or loopback" in (syslog.error or "")
    allowed = await send_test(destination("webhook", url, allow_private=True), None, actor="t")
    assert allowed.delivered and len(receiver.items) == 1


async def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    url = receiver.url("/redirect")
    result = await send_test(destination("webhook", url, allow_private=True), None, actor="t")
    assert not result.delivered and result.status == 307 and receiver.refused == 1


async def test_tls_is_verified_by_default(receiver: Receiver) -> None:
    # The receiver speaks plain HTTP; an https URL to it must fail the handshake, never fall
    # back. (A server with a certificate no CA vouches for: test_syslog's TLS refusal.)
    url = f"https://127.0.0.1:{receiver.server.port}/hook"
    result = await send_test(destination("webhook", url, allow_private=True), None, actor="t")
    assert not result.delivered and receiver.items == []
