"""SSRF protection for every outgoing request (poll sources and sinks alike).

The check runs on the address a socket is about to connect to (aiohttp's `socket_factory`),
after DNS: a name that resolves to an internal address, a DNS answer that changes between two
lookups (rebinding), a redirect to an internal host, and an IP literal are all caught at the
same place. Refused: every address that is not globally routable (loopback, private, link-local
incl. 169.254.169.254, CGNAT 100.64/10, unspecified 0.0.0.0 / ::, multicast, reserved,
documentation ranges), an IPv4 address embedded in IPv6 that is any of those (IPv4-mapped,
6to4, Teredo), and every translated or deprecated IPv4 form whatever it carries
(IPv4-compatible `::a.b.c.d`, SIIT `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96` and
`64:ff9b:1::/48`), and the reserved ranges. `DASHPIPE_EGRESS_ALLOW` (CIDR ranges) permits
ranges explicitly.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAPPED = ipaddress.ip_network("::ffff:0:0/96")
# forms that reach an IPv4 address through a translator or a deprecated embedding: refused
# even when the IPv4 address they carry is public (a translator may sit inside the network)
TRANSLATED = {
    ipaddress.ip_network("::/96"): "an IPv4-compatible address",
    ipaddress.ip_network("::ffff:0:0:0/96"): "an IPv4-translated (SIIT) address",
    NAT64: "a NAT64 address",
    ipaddress.ip_network("64:ff9b:1::/48"): "a local-use NAT64 address",
}


class EgressRefused(OSError):
    """A connection to an address the egress policy refuses; the message says why."""


def embedded(ip: Address) -> list[Address]:
    """The address and any IPv4 address carried inside it."""
    out: list[Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            out.append(ip.ipv4_mapped)
        if ip in NAT64:
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            out.append(ip.sixtofour)
        if ip.teredo is not None:
            out.extend(ip.teredo)
    return out


def refusal(host: str, allow: Sequence[Network]) -> str | None:
    """Why connecting to `host` (an IP address) is refused, or None when it is permitted."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return f"{host!r} is not an IP address"
    if any(ip in net for net in allow if net.version == ip.version):
        return None
    inner = embedded(ip)
    for candidate in [*inner[1:], ip]:  # an embedded IPv4 address explains best
        if not candidate.is_global or candidate.is_multicast:
            shown = str(ip) if candidate == ip else f"{ip} (carrying {candidate})"
            return _refused(shown, _kind(candidate))
    if isinstance(ip, ipaddress.IPv6Address):
        for net, kind in TRANSLATED.items():
            if ip in net:
                return _refused(str(ip), kind)
        # the IPv6 reserved ranges hold the mapped form, judged by the IPv4 it carries
        if ip.is_reserved and ip not in MAPPED:
            return _refused(str(ip), "a reserved address")
    elif ip.is_reserved:
        return _refused(str(ip), "a reserved address")
    return None


def _refused(shown: str, kind: str) -> str:
    return (f"refused by the egress policy: {shown} is {kind}, not a public address "
            "(DASHPIPE_EGRESS_ALLOW can permit a range)")


def _kind(ip: Address) -> str:
    for test, name in (("is_loopback", "a loopback address"),
                       ("is_link_local", "a link-local address"),
                       ("is_unspecified", "the unspecified address"),
                       ("is_multicast", "a multicast address"),
                       ("is_reserved", "a reserved address"),
                       ("is_private", "a private address")):
        if getattr(ip, test):
            return name
    return "not globally routable"


def socket_factory(allow: Sequence[Network]) -> Callable[[Any], socket.socket]:
    def make(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        reason = refusal(str(sockaddr[0]), allow)
        if reason is not None:
            raise EgressRefused(reason)
        return socket.socket(family=family, type=type_, proto=proto)
    return make


def connector(allow: Sequence[Network], **options: Any) -> aiohttp.TCPConnector:
    """A connector whose every connection passes the egress policy."""
    return aiohttp.TCPConnector(socket_factory=socket_factory(allow), **options)


def explain(exc: BaseException) -> str | None:
    """The egress refusal behind an aiohttp connection error, if that is what it was."""
    os_error = getattr(exc, "os_error", None)
    for candidate in (exc, os_error, exc.__cause__):
        if isinstance(candidate, EgressRefused):
            return str(candidate)
    return None
