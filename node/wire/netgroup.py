"""How peer addresses are grouped for limits, so that one machine cannot pass for many by using many
ports, nor one network for many machines.

* a **host** is what one machine controls: one IPv4 address, or one IPv6 /64 (an IPv6 host is commonly
  given a whole /64, and can pick any address in it). Quotas and rate limits are charged per host.
* a **subnet** is what one operator usually controls: an IPv4 /24 or an IPv6 /48. The routing table
  and lookups limit contacts per subnet too (as BitTorrent DHTs do), so that identities that cost
  nothing to make cannot all come from one place.

Both are cached: they are computed for every datagram and every contact. Also here: how an address is
written for people (`format_host_port`).
"""

import functools
import ipaddress

HOST_PREFIX_V6 = 64
SUBNET_PREFIX_V4 = 24
SUBNET_PREFIX_V6 = 48


@functools.lru_cache(maxsize=16384)
def host_of(ip: str) -> str:
    """The host an address belongs to (an IPv4-mapped IPv6 address is its IPv4 address; an IPv6 zone is
    ignored); text that is not an IP literal (a Unix socket's path) is its own host."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{HOST_PREFIX_V6}", strict=False))
    return str(address)


@functools.lru_cache(maxsize=16384)
def family_of(ip: str) -> int:
    """6 for an IPv6 address, else 4 (an IPv4-mapped IPv6 address is IPv4: it reaches an IPv4 host)."""
    return 6 if ":" in host_of(ip) else 4


@functools.lru_cache(maxsize=16384)
def subnet_of(address: str) -> str:
    """The subnet an address, or a host (`host_of`), belongs to; text that is neither is its own."""
    host = host_of(address)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        return host
    prefix = SUBNET_PREFIX_V4 if network.version == 4 else SUBNET_PREFIX_V6
    return str(network.supernet(new_prefix=prefix))


def loopback_host(index: int) -> str:
    """A loopback address for the `index`-th (1 to 65535) node of a local mesh, in a /24 of its own.
    Nodes on one address look like one machine running them all, which is what the per-host and
    per-subnet limits stop; local meshes (tests, benchmarks, `scripts/mesh`) give each node its own."""
    if not 0 < index < 1 << 16:
        raise ValueError("a local mesh has at most 65,535 nodes")
    return f"127.{index >> 8}.{index & 255}.1"


def format_host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (`[::1]:4222`): what `-b` (`bootstrap.addresses`) takes back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
