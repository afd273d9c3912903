"""A peer's routing identity: its 160-bit id and UDP address, and XOR distance between ids."""

import functools
import ipaddress
from dataclasses import dataclass, field

from dhtmesh.node.wire.netgroup import host_of, subnet_of

ID_BITS = 160
ID_BYTES = ID_BITS // 8


@dataclass(frozen=True, slots=True)
class Contact:
    node_id: bytes
    host: str
    port: int
    # Computed once: XOR distance is taken, and the host and subnet counted, for every contact each time
    # a lookup hears an answer.
    id_int: int = field(init=False, repr=False, compare=False)
    host_group: str = field(init=False, repr=False, compare=False)  # `netgroup.host_of(host)`
    subnet_group: str = field(init=False, repr=False, compare=False)  # `netgroup.subnet_of(host)`

    def __post_init__(self) -> None:
        object.__setattr__(self, "id_int", int.from_bytes(self.node_id, "big"))
        object.__setattr__(self, "host_group", host_of(self.host))
        object.__setattr__(self, "subnet_group", subnet_of(self.host))

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def to_wire(self) -> list:
        """The `(id, ip, port)` triple that `kademlia` uses in `find_node` replies."""
        return [self.node_id, self.host, self.port]


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def contact_from_wire(item: object) -> Contact | None:
    """Parse one `(id, ip, port)` triple from a peer; anything malformed is None (flaw F7)."""
    if not (isinstance(item, list) and len(item) == 3):
        return None
    node_id, host, port = item
    if not (type(node_id) is bytes and type(host) is str and type(port) is int):
        return None
    if len(node_id) != ID_BYTES or len(host) > 45 or not 0 < port < 65536:
        return None  # checked before the cache, so a peer cannot fill it with huge keys
    return _contact(node_id, host, port)  # a find reply repeats contacts we parsed before


@functools.lru_cache(maxsize=8192)
def _contact(node_id: bytes, host: str, port: int) -> Contact | None:
    literal = literal_ip(host)
    return None if literal is None else Contact(node_id, literal, port)


@functools.lru_cache(maxsize=4096)
def _scope(host: str) -> int:
    """How far an address reaches: 0 nowhere (unspecified, multicast, broadcast, reserved), 1 this
    machine (loopback), 2 a private network (RFC 1918, ULA, link-local), 3 the internet."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return 0
    if address.is_unspecified or address.is_multicast or address.is_reserved or str(address) == "255.255.255.255":
        return 0
    if address.is_loopback:
        return 1
    return 2 if address.is_private or address.is_link_local else 3


def reachable_via(referrer_host: str, host: str) -> bool:
    """Whether a contact at `host`, offered by a peer at `referrer_host`, is worth dialling: never an
    address that reaches nowhere, and none narrower than the peer's own (a peer on the internet has no
    business naming our loopback or our private network, where it would make us send its datagrams)."""
    scope = _scope(host)
    return scope > 0 and (scope >= _scope(referrer_host) or scope == 3)


@functools.lru_cache(maxsize=4096)
def literal_ip(host: str) -> str | None:
    """`host` as a normalised literal IP address, or None. Names are refused: dialling one would make us
    resolve (and block on) whatever a peer chose. Cached: every find reply carries up to k contacts."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
