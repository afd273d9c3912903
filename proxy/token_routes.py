"""ptg-api-server's login and liveness (`POST /token`, `GET /ping`), mesh-wide account creation
(`PUT /api/v0/users/{name}`), and the token check every data-stream route runs (`token_of`,
`authenticated`).

A login is ptg's: OAuth2's password form in, `{access_token, token_type}` out and the `authorization`
cookie set as ptg sets it. Its Argon2id costs the node CPU and memory, so a client host's budget is
taken before anything else (`Accounts.limits`); so is a lookup for a token this node has not verified
yet (an unknown user costs a DHT lookup). An account is created from the record the CLI signed with
the password-derived key: the password never reaches a node.

The cookie is a credential the browser sends by itself (on a WebSocket, which CORS does not guard, and
from any page of the same site, 127.0.0.1 on any port): a token read from the cookie is refused (403)
on a request a web page of an origin not allowed with `--allow-origin` made. A token in the query or
the `Authorization` header is one the page knew, so it stands.
"""

from aiohttp import web
from multidict import MultiDictProxy

from dhtmesh.api import paths
from dhtmesh.api.value_json import value_from_json, value_to_json
from dhtmesh.node.accounts.errors import BadLogin, BadToken
from dhtmesh.node.accounts.service import Accounts
from dhtmesh.node.accounts.tokens import MAX_LIFETIME
from dhtmesh.node.records.account import account_key
from dhtmesh.node.wire.ratelimit import Buckets
from dhtmesh.proxy.clients import client_of
from dhtmesh.proxy.errors import BadRequest, NotFound, TooLarge, TooManyRequests
from dhtmesh.proxy.origins import refuse_foreign
from dhtmesh.proxy.responses import json_body, json_reply
from dhtmesh.proxy.route import ACCOUNTS, Route

COOKIE = "authorization"
COOKIE_MAX_AGE = 60 * (43200 - 1)  # ptg's cookie: 2,591,940 s, and the cap on a login's `exp`
FORM_LIMIT = 4096  # a login form: a name of 64 characters and a password
BODY_LIMIT = 16 * 1024  # an account record's value JSON


def token_of(request: web.Request) -> str | None:
    """The request's token, in ptg's order: query `token`, then `Authorization: Bearer`, then the
    `authorization` cookie ("Bearer <jwt>")."""
    return _sourced(request)[0]


def _sourced(request: web.Request) -> tuple[str | None, bool]:
    """The request's token (`token_of`), and whether it came from the cookie."""
    if "token" in request.query:
        return request.query["token"], False
    for credential, from_cookie in ((request.headers.get("Authorization"), False), (request.cookies.get(COOKIE), True)):
        if credential:
            scheme, _, token = credential.strip().strip('"').partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip(), from_cookie
    return None, False


async def authenticated(request: web.Request) -> str:
    """The user the request's token is for; raises `BadToken` (401), a 403 for the cookie sent by a web
    page of a foreign origin, or a 429 when the client's host has had as many tokens checked as it may
    (only a token new to this node costs a lookup)."""
    token, from_cookie = _sourced(request)
    if token is None:
        raise BadToken("Not authenticated")
    if from_cookie:
        refuse_foreign(request, "use this node's login cookie")
    accounts = request.app[ACCOUNTS]
    if not accounts.known(token):
        _take(accounts.limits.lookups, request, "token checks")
    return await accounts.verify(token)


def _take(buckets: Buckets, request: web.Request, what: str) -> None:
    if not buckets.take(client_of(request)):
        raise TooManyRequests(f"too many {what} from your address; try again later", "http_account_requests_refused")


async def login(request: web.Request) -> web.Response:
    accounts: Accounts = request.app[ACCOUNTS]
    _take(accounts.limits.logins, request, "logins")
    lifetime = _lifetime(request)
    if request.content_length is not None and request.content_length > FORM_LIMIT:
        raise TooLarge(f"a login form is at most {FORM_LIMIT} bytes")
    form = await _form(request)
    username, password = form.get("username"), form.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise BadLogin("Incorrect username or password")
    issued = await accounts.issue(username, password, lifetime, client_of(request))
    reply = json_reply({"access_token": issued.token, "token_type": "bearer"})
    max_age = COOKIE_MAX_AGE if lifetime is None else int(lifetime)
    reply.set_cookie(COOKIE, f"Bearer {issued.token}", max_age=max_age, path="/", httponly=True, samesite="lax")
    return reply


async def _form(request: web.Request) -> MultiDictProxy:
    try:
        return await request.post()
    except ValueError as error:  # aiohttp: a multipart body without its boundary, or cut short
        raise BadRequest(f"a login is a form of username and password ({error})") from error


def _lifetime(request: web.Request) -> float | None:
    """The query's `exp` (seconds the token and cookie last), capped as ptg caps it; None: the default."""
    text = request.query.get("exp")
    if text is None:
        return None
    if not text.isdigit() or len(text) > 12 or int(text) < 1:
        raise BadRequest("exp is a number of seconds, at least 1")
    return float(min(int(text), COOKIE_MAX_AGE, MAX_LIFETIME))


async def ping(request: web.Request) -> web.Response:
    return json_reply(True)


async def put_user(request: web.Request) -> web.Response:
    accounts: Accounts = request.app[ACCOUNTS]
    if request.content_length is not None and request.content_length > BODY_LIMIT:
        raise TooLarge(f"an account record is at most {BODY_LIMIT} bytes")
    _take(accounts.limits.creations, request, "account creations")
    name = request.match_info["name"]
    record = await accounts.create(name, value_from_json(await json_body(request)), client_of(request))
    return json_reply({"name": record.name, "public_key": record.public_key.hex(), "key": account_key(name).hex()}, 201)


async def get_user(request: web.Request) -> web.Response:
    accounts: Accounts = request.app[ACCOUNTS]
    _take(accounts.limits.lookups, request, "account lookups")
    signed = await accounts.record(request.match_info["name"])
    if signed is None:
        raise NotFound("no such user")
    return json_reply(value_to_json(signed))


_AUTH_ERRORS = {401: "unknown user or wrong password", 429: "too many logins, or too many at once"}

TOKEN_ROUTES: list[Route] = [
    Route(
        "POST", paths.TOKEN, login,
        "log in (ptg-api-server's OAuth2 password form): a JWT, also set as the `authorization` cookie; "
        "`exp` (query): seconds it lasts, at most 2591940",
        "form `username`, `password`",
        {200: "`{access_token, token_type}`", 400: "bad exp, or no form", 413: "form too large", **_AUTH_ERRORS},
        body_media="application/x-www-form-urlencoded",
    ),
    Route("GET", paths.PTG_PING, ping, "liveness (ptg-api-server's): `true`", json_type="boolean"),
    Route(
        "PUT", paths.USER, put_user,
        "create a mesh-wide account from its record, signed by the password-derived key (`dhtmesh user add`)",
        "value JSON of the account record",
        {201: "`{name, public_key, key}`", 400: "no valid account record", 409: "the name is another key's",
         413: "body too large", 429: "too many account creations"},
    ),
    Route(
        "GET", paths.USER, get_user, "an account's signed record (public: name, key, salt, Argon2id limits)",
        replies={200: "value JSON", 404: "no such user", 429: "too many lookups"},
    ),
]  # fmt: skip
