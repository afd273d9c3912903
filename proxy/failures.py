"""What the proxy counts, logs and answers when a request fails other than by being refused by a route:
requests aiohttp's parser refuses (counted as bad and as malformed, one debug line, a status and message
for the JSON answer), clients that leave mid-answer (a debug line), and its own bugs (counted, logged at
ERROR with a traceback, at most once a minute per kind of exception).

Anyone can send garbage to the port, and a bug on a route anyone can call fails on every request: a
traceback for each would let any client fill the operator's log. aiohttp reports the first two kinds
through its server logger, which `ServerLogger` stands in for.
"""

import logging
import re
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from dhtmesh.node.stats import Counters, ErrorLog

log = logging.getLogger(__name__)

MALFORMED = "http_malformed"
BAD_REQUESTS = "http_bad_requests"
INTERNAL_ERRORS = "http_internal_errors"
_REASON_LENGTH = 120
# A request line starts with a method token and a space; a header line has a colon before any space.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ ")


class CutShort(ConnectionError):
    """An answer whose status is already sent cannot be finished: the connection is closed, and the
    client sees the body cut short. Raised on purpose (and reported by whoever raises it)."""


class ServerLogger(logging.LoggerAdapter):
    """aiohttp's server logger (`AppRunner(logger=...)`), sorting what aiohttp reports with an exception:
    a request that does not parse as HTTP is counted as a bad request and as `http_malformed`, with one
    short debug line; an
    answer cut short (`CutShort`, or a client gone mid-answer) is one debug line; anything else is a
    bug, for the `ErrorLog`. Messages
    without an exception pass through unchanged."""

    def __init__(self, errors: ErrorLog, counters: Counters) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._errors = errors
        self._counters = counters

    def log(self, level: int, msg: object, *args: object, exc_info: Any = None, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self._counters.add(BAD_REQUESTS)
            self._counters.add(MALFORMED)
            log.debug("malformed request: %s: %s", _text(msg, args), _reason(exc_info))
        elif isinstance(exc_info, CutShort | ConnectionResetError | BrokenPipeError):  # writing to a gone client
            log.debug("%s: the connection ended mid-answer (%s)", _text(msg, args), _reason(exc_info))
        elif isinstance(exc_info, Exception) and level >= logging.ERROR:
            self._errors.internal(exc_info, _text(msg, args))
        else:
            super().log(level, msg, *args, exc_info=exc_info, **kwargs)


def parser_refusal(error: HttpProcessingError) -> tuple[int, str]:
    """The status and message answering a request aiohttp's parser refused: 414 for a request line (so a
    key) over its limit, 431 for a header line over it, else 400."""
    if isinstance(error, LineTooLong):
        line, limit = error.args[:2]
        if isinstance(line, bytes) and _REQUEST_LINE.match(line):
            return 414, f"the request line is over {limit} bytes"
        return 431, f"a header line is over {limit} bytes"
    return 400, f"not a valid HTTP request: {_reason(error)}"


def _text(msg: object, args: tuple) -> str:
    return str(msg) % args if args else str(msg)


def _reason(error: BaseException) -> str:
    """One short line: an exception's message may hold the client's bytes, over several lines."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return " ".join(str(message).split())[:_REASON_LENGTH]
