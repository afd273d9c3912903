"""ptg-api-server's streams and data routes, REST and WebSocket (skeleton)."""

from dhtmesh.proxy.route import Route

STREAM_ROUTES: list[Route] = []
