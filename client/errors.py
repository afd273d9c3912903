"""What a client call raises: every failure is a `ClientError`; an HTTP error status is an `ApiError`
carrying the status and the proxy's `{"err"}` text."""

import json


class ClientError(Exception):
    """The root of the client's exceptions."""


class ApiError(ClientError):
    """The proxy answered with an error status; `message` is its `{"err"}` text (or the body itself)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @classmethod
    def from_body(cls, status: int, text: str) -> "ApiError":
        return cls(status, error_text(text))


class Unreachable(ClientError):
    """No answer: the connection failed, or broke off (aiohttp's own error, as text)."""


class TimedOut(Unreachable):
    """No whole answer within the client's answer timeout (`Client(url, timeout=...)`)."""


class BadAnswer(ClientError):
    """An answer that is not what the route promises (not JSON, or a record that does not check)."""


class CutShort(ClientError):
    """A blob's body ended before its length: a chunk no holder served, or the connection broke."""

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received


class NotRegistered(ClientError):
    """A change to a farmer the mesh holds no record of (it must register first)."""

    def __init__(self, farmer_id: bytes) -> None:
        super().__init__(f"farmer {farmer_id.hex()} is not registered")
        self.farmer_id = farmer_id


def error_text(text: str) -> str:
    """The `err` of a JSON error body, else the body as text."""
    try:
        return str(json.loads(text).get("err", text))
    except (ValueError, AttributeError):
        return text.strip()
