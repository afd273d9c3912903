"""Who a proxy client is, for per-client caps, and the cap on what a client holds open at once.

A client is its IP address, not its port (a client opens as many connections as it likes); an IPv6
client is its /64, since one host is routinely given a whole /64 and could otherwise take a new
address per stream.
"""

import ipaddress
from collections import Counter
from types import TracebackType

from aiohttp import web

from dhtmesh.proxy.responses import BadRequest


def client_group(remote: str | None) -> str:
    """The client a peer address belongs to: the IPv4 address, or the IPv6 /64 (an IPv4-mapped IPv6
    address is its IPv4 address). Anything that is not an IP (a Unix socket) is one client."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or ""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def client_of(request: web.Request) -> str:
    return client_group(request.remote)


class ClientSlots:
    """At most `limit` concurrent holders per client of something that lasts as long as a request
    (a listen stream). `hold` refuses at the cap with a 429; a slot is freed when its request ends."""

    def __init__(self, limit: int, what: str, counter: str) -> None:
        self.limit = limit
        self._what = what
        self._counter = counter
        self._held: Counter[str] = Counter()

    def hold(self, client: str) -> "_Slot":
        """A slot for `client`, to use in a `with` block; raises `BadRequest` (429) at the cap."""
        if self._held[client] >= self.limit:
            raise BadRequest(f"too many {self._what} from your address (at most {self.limit})", 429, self._counter)
        self._held[client] += 1
        return _Slot(self, client)

    def _release(self, client: str) -> None:
        self._held[client] -= 1
        if not self._held[client]:
            del self._held[client]  # an idle client costs no memory


class _Slot:
    def __init__(self, slots: ClientSlots, client: str) -> None:
        self._slots = slots
        self._client = client

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._slots._release(self._client)
