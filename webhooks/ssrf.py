"""Which webhook URLs may be called: http(s) only, and never an internal address.

The URL's host is resolved (``socket.getaddrinfo``) and every address it resolves to is
classified; a single internal one (loopback, private, link-local, multicast, reserved,
unspecified, or otherwise not globally routable) refuses the URL unless the allow-list
(``DQ_WEBHOOK_ALLOWLIST``: hostnames and CIDRs) permits the host or that address. The vetted
address comes back in the ``Target`` so the caller connects to it rather than resolving
again (no DNS rebinding between the check and the connection).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
DEFAULT_PORTS = {"http": 80, "https": 443}
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class WebhookURLRefused(ValueError):
    """The URL may not be called; ``str(exc)`` says why (shown to clients as is)."""


class WebhookHostUnresolved(WebhookURLRefused):
    """The host did not resolve: refused at submit, retried at delivery (DNS may recover)."""


@dataclass(frozen=True)
class Target:
    """A vetted webhook URL: connect to ``ip``, send ``host_header``, verify TLS for ``host``."""

    url: str
    scheme: str
    host: str
    port: int
    ip: str
    path: str  # path and query, at least "/"
    host_header: str


@dataclass(frozen=True)
class Allowlist:
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    @functools.lru_cache(maxsize=8)  # parsed once per setting, not per submit
    def parse(cls, raw: str) -> Allowlist:
        """``"127.0.0.1, hooks.internal, 10.0.0.0/8, ::1"``: CIDRs (a bare IP is a /32 or /128) or hostnames."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (part.strip() for part in raw.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(_normal_host(entry))
        return cls(frozenset(hosts), tuple(networks))

    def permits_host(self, host: str) -> bool:
        return _normal_host(host) in self.hosts

    def permits_address(self, address: IPAddress) -> bool:
        candidates = [address, *_embedded_ipv4(address)]
        return any(a in net for a in candidates for net in self.networks if a.version == net.version)


@functools.lru_cache(maxsize=1024)  # ipaddress's is_private & co. scan tables: ~20 µs per address
def address_problem(address: IPAddress) -> str | None:
    """Why an address is internal ('loopback', 'private', …), or None for a public one."""
    for embedded in _embedded_ipv4(address):
        problem = address_problem(embedded)
        if problem:
            return problem
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("non-global", not address.is_global),  # e.g. 100.64.0.0/10 (carrier-grade NAT)
    )
    return next((name for name, hit in checks if hit), None)


def check_webhook_url(url: str, allowlist: Allowlist | str, resolve: Resolver | None = None) -> Target:
    """The vetted target of ``url``; raises ``WebhookURLRefused`` saying why it may not be called."""
    allowed = Allowlist.parse(allowlist) if isinstance(allowlist, str) else allowlist
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise WebhookURLRefused("must be an http or https URL")
    host = parts.hostname
    if not host:
        raise WebhookURLRefused("must name a host")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise WebhookURLRefused("has an invalid port") from None
    literal = _ip_literal(host)
    addresses = [literal] if literal else _resolve(host, port, resolve or resolve_host)
    if not allowed.permits_host(host):
        for address in addresses:
            problem = address_problem(address)
            if problem and not allowed.permits_address(address):
                where = host if literal else f"{host} resolves to {address}, which"
                raise WebhookURLRefused(
                    f"{where} is a {problem} address; webhooks may only target public addresses "
                    "(DQ_WEBHOOK_ALLOWLIST lists hosts or CIDRs that are permitted anyway)"
                )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        ip=str(addresses[0]),
        path=path,
        host_header=parts.netloc.rpartition("@")[2],
    )


def resolve_host(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    try:
        found = [ipaddress.ip_address(a) for a in resolve(host, port)]
    except (OSError, UnicodeError, ValueError) as exc:
        raise WebhookHostUnresolved(f"host {host!r} does not resolve ({exc})") from None
    if not found:
        raise WebhookHostUnresolved(f"host {host!r} resolves to no address")
    return found


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 one carries: mapped (::ffff:a.b.c.d), 6to4, NAT64."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address in NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()
