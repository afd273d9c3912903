"""`Port`: a node's TCP port (the same number as its UDP port), shared by its stream services.

It accepts a connection within the per-host and total connection caps (`port_limits`: the only ones a
connection counts against), reads the first frame's header (bounded, within `HEADER_TIMEOUT`) and hands
the connection to the service that op belongs to: the chunk service ("put", "keep", "get", "prove"; a
farmer's only) or the streams' replica service ("s.*" and "r.*"). Anything else is answered with an
error, counted, and closed.

Its refusals keep the counter names of the chunk port it grew out of (`chunk_port_refused`,
`chunk_port_header_timeouts`, `chunk_port_connections_over_..._cap`, `chunk_port_bad_frames`): what
operators and tests watch did not change when the streams came to share it.
"""

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from dhtmesh.node.stats import Counters
from dhtmesh.node.transfer.chunk_service import REFUSED, ChunkService
from dhtmesh.node.transfer.framing import FramingError, frame, read_header
from dhtmesh.node.transfer.port_limits import HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS
from dhtmesh.node.wire.netgroup import host_of
from dhtmesh.node.wire.ratelimit import Full, Slots

CHUNK_OPS = frozenset({"put", "keep", "get", "prove"})
StreamHandler = Callable[[dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


class Port:
    def __init__(
        self,
        counters: Counters,
        streams: StreamHandler | None,
        chunks: ChunkService | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._counters = counters
        self._streams = streams
        self._chunks = chunks
        self._connections = Slots("connections", max_connections, min(MAX_CONNECTIONS_PER_ADDRESS, max_connections))
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()  # closed on stop: replica links stay open otherwise

    async def start(self, host: str = "", port: int = 0, sock: socket.socket | None = None) -> None:
        """Listen on TCP `host:port`, or on the bound socket `sock` (raises `OSError`, e.g. EADDRINUSE)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(self._serve, host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = host_of(str((writer.get_extra_info("peername") or ("",))[0]))
        self._open.add(writer)
        try:
            with self._connections.held(host):
                header = await self._header(reader)
                op = header.get("op")
                if isinstance(op, str) and op in CHUNK_OPS and self._chunks is not None:
                    await self._chunks.serve(reader, writer, header)
                elif isinstance(op, str) and op.startswith(("s.", "r.")) and self._streams is not None:
                    await self._streams(header, reader, writer, host)
                else:
                    self._refuse(writer, "chunk_port_unknown_ops", "this node serves no such op")
        except Full as full:
            self._refuse(writer, f"chunk_port_connections_over_{full.scope}_cap", str(full))
        except _NoHeader as error:
            self._refuse(writer, error.counter, str(error))
        finally:
            self._open.discard(writer)

    async def _header(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                return await read_header(reader)
        except TimeoutError as error:
            raise _NoHeader(f"no request within {HEADER_TIMEOUT:g} s", "chunk_port_header_timeouts") from error
        except FramingError as error:
            raise _NoHeader(str(error), "chunk_port_bad_frames") from error

    def _refuse(self, writer: asyncio.StreamWriter, counter: str, reason: str) -> None:
        self._counters.add(REFUSED)
        self._counters.add(counter)
        with contextlib.suppress(OSError):
            writer.write(frame({"err": reason}))
        writer.close()


class _NoHeader(Exception):
    def __init__(self, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.counter = counter
