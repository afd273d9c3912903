"""The accounts layer's exceptions: `AccountError` is its root; the proxy's error table answers each."""

from dhtmesh.node.errors import ServiceError


class AccountError(ServiceError):
    """The accounts service refused or could not do what it was asked."""


class BadLogin(AccountError):
    """An unknown user or a wrong password (401)."""


class BadToken(AccountError):
    """A token that is missing, malformed, badly signed, expired, or of an unknown user (401)."""


class AccountExists(AccountError):
    """The name is held by another key (409)."""


class BadAccount(AccountError):
    """A signed account record that is malformed, or no account record (400)."""
