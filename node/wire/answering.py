"""Replies that async `dm_*` handlers are still working on: bounded, and never served twice.

A caller that hears nothing within a few round trips sends its request again, with the same message
id. While the first is still being answered, the retry is dropped: the answer on its way answers both.
A flood of requests to an async handler costs at most `MAX_ANSWERING` tasks in all and
`MAX_ANSWERING_PER_HOST` for one host (every port of it together); beyond that the handler is not run
and the asker is told `busy`.
"""

from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from dhtmesh.node.stats import Counters
from dhtmesh.node.tasks import TaskSet
from dhtmesh.node.wire.errors import RpcTimeout
from dhtmesh.node.wire.messages import Request, Sealed
from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.node.wire.ratelimit import Address

MAX_ANSWERING = 256
MAX_ANSWERING_PER_HOST = 16
BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Later:
    """An async handler's work for `request`, not started yet: its payload once awaited."""

    request: Request
    work: Coroutine[Any, Any, Any]
    inner: "Later | None" = None  # a `dm_done`'s: the request it carried, whose work `work` awaits

    def drop(self) -> None:
        """Close the work unstarted (and the inner request's), so that none of it ever runs."""
        self.work.close()
        if self.inner is not None:
            self.inner.drop()


Finish = Callable[[Later], Awaitable[Sealed]]
"""Await the work and seal its envelope, as every reply is."""
Send = Callable[[bytes, Address, Sealed], None]
"""Send a sealed envelope as the reply to the request `message_id` from `address`."""


class Answering:
    def __init__(self, counters: Counters, finish: Finish, send: Send) -> None:
        self._counters = counters
        self._finish = finish
        self._send = send
        self._tasks = TaskSet(counters)
        self._working: set[tuple[Address, bytes]] = set()
        self._per_host: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._working)

    def answer(self, message_id: bytes, later: Later) -> None:
        """Answer the request `message_id` when `later`'s work is done, if there is room to."""
        address = later.request.address
        claim, host = (address, message_id), host_of(address[0])
        if claim in self._working:
            later.drop()
            self._counters.add("retries_while_answering")
            return
        if len(self._working) >= MAX_ANSWERING or self._per_host[host] >= MAX_ANSWERING_PER_HOST:
            later.drop()  # checked before the handler does any work
            self._counters.add("busy_replies")
            self._send(message_id, address, Sealed.of({"err": BUSY}))
            return
        self._working.add(claim)
        self._per_host[host] += 1
        self._tasks.spawn(self._reply(claim, host, later))

    async def _reply(self, claim: tuple[Address, bytes], host: str, later: Later) -> None:
        try:
            sealed = await self._finish(later)
            self._send(claim[1], claim[0], sealed)
        except RpcTimeout:
            pass  # the socket closed while the handler worked: nobody to answer
        finally:
            self._working.discard(claim)
            self._per_host[host] -= 1
            if not self._per_host[host]:
                del self._per_host[host]

    async def close(self) -> None:
        await self._tasks.close()
