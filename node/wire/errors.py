"""How an RPC fails, for the caller and for a handler that refuses (its reason goes back to the peer)."""


class RpcFailure(Exception):
    """A call that got no usable answer."""


class RpcTimeout(RpcFailure):
    """No reply, even after the retry."""


class RpcRefused(RpcFailure):
    """The peer answered with an error (or a handler refuses a request: the reason goes back)."""


class ProtocolViolation(RpcFailure):
    """The peer answered something that is not a well-formed reply."""
