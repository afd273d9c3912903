"""The errors of the streams layer, each mapped by the routes to one HTTP status."""


class StreamError(Exception):
    """The root of this layer."""


class UnknownStream(StreamError):
    """No such stream (404)."""


class BadStreamRequest(StreamError):
    """A bad sid, meta, id, group, or an id not above the stream's last (400)."""


class EntryTooLarge(StreamError):
    """An entry over `MAX_ENTRY`, or a batch over `MAX_BATCH_BYTES` (413)."""


class StreamUnavailable(StreamError):
    """No majority of the stream's homes reachable, or the primary not found in time (503)."""
