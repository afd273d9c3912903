"""How the proxy writes a JSON document: one line, keys sorted as OpenDHT's jsoncpp writes them. A
client that prints a document it decoded writes it back with the same bytes."""

from typing import Any

import orjson


def json_line(document: Any) -> bytes:
    """One JSON document and a newline, keys sorted."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS) + b"\n"
