"""Parsing and resolving `host:port` peer addresses given by a user, and writing them so that they parse."""

import socket

from dhtmesh.node.wire.ratelimit import Address

DEFAULT_PORT = 4222


class AddressError(ValueError):
    """A peer address that cannot be parsed or resolved; the message is fit for a user."""


def parse_host_port(spec: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
    spec = spec.strip()
    if not spec:
        raise AddressError("empty address")
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
    else:
        host, port_text = spec, ""
    if not host:
        raise AddressError(f"no host in {spec!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError as error:
        raise AddressError(f"bad port in {spec!r}") from error
    if not 0 < port < 65536:
        raise AddressError(f"port out of range in {spec!r}")
    return host, port


def resolve(spec: str, default_port: int = DEFAULT_PORT, family: int = socket.AF_INET) -> Address:
    """Resolve to one numeric UDP address (of `family` when the name has one)."""
    host, port = parse_host_port(spec, default_port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as error:
        raise AddressError(f"cannot resolve bootstrap address {spec!r}: {error}") from error
    infos.sort(key=lambda info: info[0] != family)
    address = infos[0][4]
    return address[0], address[1]


def socket_family(host: str) -> int:
    """The family of the UDP socket a node bound to `host` has (as `DhtNode.start` makes it)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def family_name(family: int) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"
