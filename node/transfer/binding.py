"""Binding a node's two sockets on one address and port: the node's UDP socket and the TCP socket its
port listens on (`port.Port`: the streams' replicas, a farmer's chunks), so that a contact is enough to
reach both. With port 0 the TCP
socket takes a free port first and the UDP socket the same one, retried when that UDP port is taken
(UDP and TCP ports are separate spaces: a free TCP port says nothing of the UDP one)."""

import errno
import socket

from dhtmesh.node.dht import DhtNode

PORT_ATTEMPTS = 20


class BindError(OSError):
    """One of the two sockets could not be bound; `what` says which ("stream (TCP)" or "UDP")."""

    def __init__(self, cause: OSError, what: str, port: int) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.what = what
        self.port = port


async def start_with_stream_socket(node: DhtNode, host: str, port: int) -> socket.socket:
    """Start `node` on UDP `host:port` and return a listening TCP socket on the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(PORT_ATTEMPTS):
        try:
            stream = socket.create_server((host, port), family=family)
        except OSError as error:
            raise BindError(error, "stream (TCP)", port) from error
        bound = stream.getsockname()[1]
        try:
            await node.start(host, bound)
        except OSError as error:
            stream.close()
            if port != 0 or error.errno != errno.EADDRINUSE:
                raise BindError(error, "UDP", bound) from error
            continue
        return stream
    raise BindError(OSError(errno.EADDRINUSE, "no port free for both UDP and TCP"), "UDP", port)
