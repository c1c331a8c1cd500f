"""The SSRF guard (RELIABILITY 14): webhook URLs must be https and must not reach loopback,
private, link-local, metadata or other non-public addresses, unless a private-mode server
lifted it.

Checked twice: when the webhook is created (`check_url`, which resolves the name), and at
every connection (`GuardedBackend`), which resolves the name itself, refuses a forbidden
address and connects to the address it checked — so a name that re-binds to 127.0.0.1
after creation is refused too, with no window between the check and the connect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

__all__ = ["Policy", "ForbiddenTarget", "check_url_syntax", "check_url", "forbidden_reason", "GuardedBackend"]

_MAX_URL = 2048
# Cloud metadata services (AWS/GCP/Azure, AWS over IPv6, Alibaba).
_METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}


_SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated, still routed inside some networks
# getaddrinfo blocks a thread; a slow DNS server chosen by a webhook owner must not take the
# default executor every database call of the API runs on.
_DNS_THREADS = 4
_DNS_TIMEOUT = 5.0
_dns_pool = concurrent.futures.ThreadPoolExecutor(_DNS_THREADS, thread_name_prefix="smsgw-dns")
_dns_slots = threading.BoundedSemaphore(_DNS_THREADS * 4)  # waiting lookups, beyond them refused


class ForbiddenTarget(Exception):
    """The URL may not be delivered to; the message says why (safe to show the owner)."""


@dataclass(frozen=True, slots=True)
class Policy:
    allow_private: bool = False
    allow_http: bool = False


def forbidden_reason(address: str) -> str | None:
    """Why an IP address is off limits, or None for a public unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL:
            return "a site-local address"
        # IPv4 inside IPv6 (mapped, 6to4, Teredo's server and client): judge the IPv4 address.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            reason = forbidden_reason(str(embedded))
            if reason is not None:
                return reason
            ip = embedded
    if ip in _METADATA:
        return "a cloud metadata address"
    for test, what in (
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_private, "a private address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    ):
        if test:
            return what
    return None


def check_url_syntax(url: str, policy: Policy) -> tuple[str, int]:
    """Scheme, host and port of an acceptable URL, without resolving it; ForbiddenTarget says why not."""
    if len(url) > _MAX_URL:
        raise ForbiddenTarget(f"longer than {_MAX_URL} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        # urlsplit drops tabs and newlines silently; the URL sent would not be the one checked.
        raise ForbiddenTarget("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ForbiddenTarget("not a valid URL") from None
    if parts.scheme not in ("https", "http"):
        raise ForbiddenTarget("must be an https:// URL")
    if parts.scheme == "http" and not policy.allow_http:
        raise ForbiddenTarget("must be https (plain http is allowed only by a private-mode server's config)")
    if not parts.hostname:
        raise ForbiddenTarget("has no host")
    if parts.username or parts.password:
        raise ForbiddenTarget("must not carry credentials (user:password@)")
    if parts.fragment:
        raise ForbiddenTarget("must not have a #fragment")
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise ForbiddenTarget("not a URL the sender can use") from None
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        _check_addresses(host, [host], policy, literal=True)
    return host, port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, policy: Policy) -> None:
    """`check_url_syntax`, then every address the host resolves to must be allowed."""
    host, port = check_url_syntax(url, policy)
    await resolve(host, port, policy)


async def resolve(host: str, port: int, policy: Policy) -> list[str]:
    """The host's addresses, all checked; ForbiddenTarget if it does not resolve or any is forbidden."""
    if not _dns_slots.acquire(blocking=False):
        raise ForbiddenTarget(f"{host}: too many name lookups in progress, try again")
    job = _dns_pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    job.add_done_callback(lambda _: _dns_slots.release())  # when the thread is done, not when we stop waiting
    try:
        async with asyncio.timeout(_DNS_TIMEOUT):
            infos = await asyncio.wrap_future(job)
    except TimeoutError:
        raise ForbiddenTarget(f"{host} does not resolve (no DNS answer within {_DNS_TIMEOUT:g} s)") from None
    except (socket.gaierror, UnicodeError):
        raise ForbiddenTarget(f"{host} does not resolve (no DNS answer)") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise ForbiddenTarget("host does not resolve")
    _check_addresses(host, addresses, policy)
    return addresses


def _check_addresses(host: str, addresses: Iterable[str], policy: Policy, *, literal: bool = False) -> None:
    if policy.allow_private:
        return
    for address in addresses:
        reason = forbidden_reason(address)
        if reason is not None:
            # One bad address refuses the name: an attacker controls which one a client picks.
            raise ForbiddenTarget(f"{host} is {reason}" if literal else f"{host} resolves to {reason}")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the check at connect time; TLS still verifies (and
    sends SNI for) the URL's host name, because httpcore passes it to start_tls itself."""

    def __init__(self, policy: Policy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await resolve(host, port, self.policy)
        except ForbiddenTarget as exc:
            raise httpcore.ConnectError(f"refused by the SSRF guard: {exc}") from None
        last: Exception | None = None
        for address in addresses:  # every one was checked; a dual-stack name may answer on one only
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
