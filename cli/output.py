"""How client commands print what the proxy sends: a readable `key=value` line per value, its data as
text when it is text (`--json`: the proxy's exact JSON lines instead)."""

import base64
import binascii
import json
from typing import Any

from dhtmesh.api.value_json import ValueJsonError, owner_from_pem
from dhtmesh.crypto.keys import node_id_from_public_key


def printable(line: str, as_json: bool) -> str:
    """What to print for one JSON line of the proxy: the line itself with `--json`, else `value_line`
    of it (a line that is no JSON object is printed as it came)."""
    if as_json:
        return line if line.endswith("\n") else line + "\n"
    try:
        document = json.loads(line)
    except ValueError:
        return line
    return value_line(document) + "\n" if isinstance(document, dict) else line


def value_line(document: dict[str, Any]) -> str:
    """`id=.. [type=..] [seq=.. owner=..] [to=..] [flags] data="text"` for a value JSON; binary data as
    `data_base64=..`; a value sealed to someone else as `sealed=true` (its cypher is no use to read)."""
    fields = [f"id={document['id']}"] if "id" in document else []
    if document.get("type"):
        fields.append(f"type={document['type']}")
    if "owner" in document:
        fields += [f"seq={document.get('seq', 0)}", f"owner={_owner_id(document['owner'])}"]
    fields += [f"{name}={document[name]}" for name in ("to", "replicas") if name in document]
    utype = document.get("utype")
    if utype and utype != "text/plain":
        fields.append(f"utype={json.dumps(utype)}")
    fields += [f"{flag}=true" for flag in ("decrypted", "expired") if document.get(flag)]
    if "data" in document:
        fields.append(_data_field(str(document["data"]), str(utype or "")))
    elif "cypher" in document:
        fields.append("sealed=true")
    return " ".join(fields)


def _owner_id(pem: Any) -> str:
    """The owner's node id (what `identity show` prints), or `?` for a key this version cannot read."""
    try:
        return node_id_from_public_key(owner_from_pem(str(pem))).hex()
    except ValueJsonError:
        return "?"


def _data_field(encoded: str, utype: str) -> str:
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return f"data_base64={encoded}"
    try:
        text = data.decode()
    except UnicodeDecodeError:
        if not utype.startswith("text/"):
            return f"data_base64={encoded}"
        text = data.decode(errors="replace")  # said to be text: show what can be read of it
    return f"data={json.dumps(text, ensure_ascii=False)}"
