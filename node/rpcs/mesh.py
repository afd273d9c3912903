"""dhtmesh's own RPCs, registered on a node's endpoint (each handler says what it asks of a sender: a
store, a fetch or a subscription wants one proven from its address, a find or a hello does not): each
RPC's typed request and reply, its client call and its handler live side by side in one module of its group
(`hello.py`, `find.py`: find and fetch, `storing.py`: store and versions, `listen.py`: sub, unsub and
notify).

Every request first passes through `Admission.consider`, which refreshes a proven sender in the routing
table or challenges an unproven one. Values are verified on every hop (`DhtNode.rules`: the mesh's
`records.check_value`, through `DhtNode.accept_store` for every value a peer asks us to hold).
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dhtmesh.node.rpcs import find, hello, listen, storing
from dhtmesh.node.wire.endpoint import Endpoint, Request

if TYPE_CHECKING:
    from dhtmesh.node.dht import DhtNode

Handler = Callable[["DhtNode", Request], Any]
"""A `dm_*` handler: the reply's payload (or an awaitable of it) for one request to this node."""

HANDLERS: dict[str, Handler] = {
    hello.NAME: hello.serve_hello,
    find.FIND: find.serve_find,
    storing.STORE: storing.serve_store,
    listen.SUBSCRIBE: listen.serve_subscribe,
    listen.UNSUBSCRIBE: listen.serve_unsubscribe,
    listen.NOTIFY: listen.serve_notify,
    storing.VERSIONS: storing.serve_versions,
    find.FETCH: find.serve_fetch,
}


def register_mesh_rpcs(node: "DhtNode", endpoint: Endpoint) -> None:
    for name, handler in HANDLERS.items():
        endpoint.route(name, _admitting(node, handler))


def _admitting(node: "DhtNode", handler: Handler) -> Callable[[Request], Any]:
    def serve(request: Request) -> Any:
        node.admission.consider(request.address, request.sender_id)
        return handler(node, request)

    return serve
