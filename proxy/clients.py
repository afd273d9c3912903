"""Who a proxy client is, for per-client caps, and the cap on what a client holds open at once.

A client is its host (`netgroup.host_of`: its IP address, not its port, since a client opens as many
connections as it likes; an IPv6 client is its /64, since one host is routinely given a whole /64 and
could otherwise take a new address per stream).
"""

from collections import Counter
from types import TracebackType

from aiohttp import web

from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.proxy.responses import BadRequest


def client_of(request: web.Request) -> str:
    return host_of(request.remote or "")


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
