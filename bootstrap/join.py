"""Staying joined: join through the bootstrap peers and the saved ones; while isolated, retry with
exponential backoff and say so; save the routing table's peers now and then.

A node with no peer to try is the first node of a new mesh: that is said once, at info level, and it
waits for others to join it (an isolated node with peers it cannot reach is warned about each time)."""

import asyncio
import logging

from dhtmesh.bootstrap.addresses import socket_family
from dhtmesh.bootstrap.peers import PeerBook
from dhtmesh.node.dht import DhtNode
from dhtmesh.node.wire.ratelimit import Address

log = logging.getLogger("dhtmesh.join")

MIN_RETRY = 1.0
MAX_RETRY = 60.0
SAVE_INTERVAL = 30.0


class Joiner:
    def __init__(self, node: DhtNode, bootstrap: list[Address], book: PeerBook | None) -> None:
        self._node = node
        self._bootstrap = bootstrap
        self._book = book
        self.isolated = True
        self._first_said = False

    def candidates(self) -> list[Address]:
        """The bootstrap and saved peers the node's socket can reach (saved ones may be of the other
        family, when the data directory was last used with another --bind)."""
        saved = self._book.load() if self._book else []
        family = socket_family(self._node.address[0])
        return [a for a in dict.fromkeys(self._bootstrap + saved) if socket_family(a[0]) == family]

    async def run(self) -> None:
        delay = MIN_RETRY
        while True:
            if self._node.contact_count() == 0:
                delay = await self._try_join(delay)
            else:
                self.isolated = False
                delay = MIN_RETRY
                self.save()
                await asyncio.sleep(SAVE_INTERVAL)

    async def _try_join(self, delay: float) -> float:
        candidates = self.candidates()
        if candidates:
            known = await self._node.join(candidates)
            if known:
                self.isolated = False
                log.info("joined the mesh: %d contacts", known)
                self.save()
                return MIN_RETRY
        self.isolated = True
        if candidates:
            good, dubious = self._node.table_health()
            log.warning(
                "isolated: %d good and %d dubious contacts, %d peers to try; retrying in %.0f s",
                good,
                dubious,
                len(candidates),
                delay,
            )
        elif not self._first_said:
            self._first_said = True
            log.info(
                "first node of a new mesh: no peers to join; others join it with -b HOST:%d", self._node.address[1]
            )
        await asyncio.sleep(delay)
        return min(delay * 2, MAX_RETRY)

    def save(self) -> None:
        if self._book is not None and self._node.contact_count():
            try:
                self._book.save(self._node.contacts())
            except OSError as error:
                log.warning("cannot save peers: %s", error)
