"""The root of the crypto layer's exceptions, so that whoever answers a client (the proxy's error table,
`proxy/errors.py`) can tell a refusal of bad keys, addresses or signatures from its own bugs."""


class CryptoError(Exception):
    """A key, address, signature or sealed box that does not check out."""
