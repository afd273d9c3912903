"""The peers a node knew, saved as JSON in its data directory so that it can rejoin after a restart."""

import json
import logging
import os
from pathlib import Path

from dhtmesh.node.routing.contact import Contact
from dhtmesh.node.wire.ratelimit import Address

log = logging.getLogger(__name__)

MAX_SAVED = 200


class PeerBook:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Address]:
        """Saved peer addresses; a missing or damaged file means none (and is said in the log)."""
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable peer file %s: %s", self.path, error)
            return []
        peers = document.get("peers") if isinstance(document, dict) else None
        addresses: list[Address] = []
        for peer in peers if isinstance(peers, list) else []:
            if isinstance(peer, dict) and isinstance(peer.get("host"), str) and isinstance(peer.get("port"), int):
                addresses.append((peer["host"], peer["port"]))
        return addresses[:MAX_SAVED]

    def save(self, contacts: list[Contact]) -> None:
        document = {
            "peers": [{"id": c.node_id.hex(), "host": c.host, "port": c.port} for c in contacts[:MAX_SAVED]]
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(document))
        os.replace(temporary, self.path)
