"""Datagrams seen from outside a node: what nodes send (`watch_datagrams`), and one hand-made rpcudp
request from a bare socket, as a stock peer or a stranger that never proved an identity sends it
(`udp_request`)."""

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dhtmesh.node.dht import DhtNode
from dhtmesh.node.wire import codec
from dhtmesh.node.wire.ratelimit import Address


@contextlib.contextmanager
def watch_datagrams(nodes: Iterable[DhtNode]) -> Iterator[list[tuple[Address, bytes]]]:
    """Record `(destination, datagram)` for everything the nodes send while the block runs."""
    sent: list[tuple[Address, bytes]] = []
    transports = []
    for node in nodes:
        transport = node.transport
        assert transport is not None
        original = transport.sendto

        def sendto(data: bytes, addr: Any = None, *, _original: Callable = original) -> None:
            sent.append((addr, bytes(data)))
            _original(data, addr)

        transport.sendto = sendto  # type: ignore[method-assign]
        transports.append(transport)
    try:
        yield sent
    finally:
        for transport in transports:
            del transport.sendto  # the class's own method again


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if not self.reply.done() and data[:1] == bytes((codec.RESPONSE,)):
            self.reply.set_result(codec.decode(data).body)


async def udp_request(to: Address, name: str, args: list, *, source: str = "127.0.0.1", patience: float = 2.0) -> Any:
    """One hand-made rpcudp request from a bare socket on `source` (a stock peer, or anyone who never
    proved an identity); returns the reply's body, or raises `TimeoutError`."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_OneReply, local_addr=(source, 0))
    try:
        transport.sendto(codec.encode(codec.REQUEST, os.urandom(codec.MESSAGE_ID_SIZE), [name, args]), to)
        async with asyncio.timeout(patience):
            return await protocol.reply
    finally:
        transport.close()
