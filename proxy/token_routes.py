"""ptg-api-server's login: `POST /token` and the token check every data-stream route runs (skeleton)."""

from dhtmesh.proxy.route import Route

TOKEN_ROUTES: list[Route] = []
