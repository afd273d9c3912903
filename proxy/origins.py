"""Which web pages may change state through the proxy: the `Origin` policy and the origins it trusts.

Any page open in the operator's browser can make it send a POST (a `text/plain` fetch or a form needs
no CORS preflight) to a proxy on 127.0.0.1, and the browser labels it with the page's `Origin`. So a
request that can change state — every method but GET, HEAD and OPTIONS, and the dataserv routes that
change a farmer over GET — is refused (403) when it carries an `Origin` that is not allowed with
`--allow-origin`. Native clients (curl, `dhtnode`, the CLI) send no `Origin` and are not affected; GET
reads stay open to every page, as OpenDHT serves them (`Access-Control-Allow-Origin: *`, never with
credentials, so a browser keeps an answer to a cookie-carrying read from the page). The data WebSockets
apply the same check to their handshake (`refuse_foreign`): a browser sends the `authorization` cookie to
a socket any page opens, and the same-origin policy does not cover WebSockets.
"""

import re
from urllib.parse import urlsplit

from aiohttp import web

from dhtmesh.proxy.errors import Forbidden
from dhtmesh.proxy.route import ALLOWED_ORIGINS, Handler, Route, table_path

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REFUSED = "http_origin_refused"
_ORIGIN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#@\s]+)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(text: str) -> str:
    """`scheme://host[:port]` as a browser sends it in `Origin` (lowercase, no default port); raises
    `ValueError` for anything else, including `null` (sandboxed frames and local files send it, so
    allowing it would allow any page)."""
    if text == "null":
        raise ValueError("null is the origin of sandboxed frames and local files: it is never allowed")
    match = _ORIGIN.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an origin (scheme://host[:port], no path)")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises for a port that is not a number in 0..65535
    except ValueError as error:  # also a bracketed host that is not IPv6
        raise ValueError(f"{text!r} has a bad host or port") from error
    host = parts.hostname
    if not host:
        raise ValueError(f"{text!r} has no host")
    scheme = match.group(1).lower()
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{scheme}://{host}:{port}"


def origin_policy(routes: list[Route]) -> Handler:
    """The middleware refusing state changes from foreign origins; `routes` marks the GETs that change
    state (`Route.unsafe_get`)."""
    unsafe_gets = frozenset(route.path for route in routes if route.unsafe_get)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _changes_state(request, unsafe_gets):
            refuse_foreign(request, "change state through this node")
        return await handler(request)

    return middleware  # type: ignore[return-value]


def refuse_foreign(request: web.Request, what: str) -> None:
    """A 403 (counted) when the request carries an `Origin` not allowed: such a page may not `what`."""
    allowed = request.app.get(ALLOWED_ORIGINS, frozenset())  # an app that allows none: every page is foreign
    foreign = [origin for origin in request.headers.getall("Origin", []) if origin not in allowed]
    if foreign:
        raise Forbidden(
            f"a web page of origin {foreign[0]!r} may not {what} (its operator can allow it with --allow-origin)",
            REFUSED,
        )


def _changes_state(request: web.Request, unsafe_gets: frozenset[str]) -> bool:
    if request.method not in SAFE_METHODS:
        return True
    resource = request.match_info.route.resource
    return resource is not None and table_path(resource.canonical) in unsafe_gets
