"""`Streams`: the mesh's data streams as a node's service (skeleton: filled in by issue 17's work)."""

from dhtmesh.node.accounts.service import Accounts
from dhtmesh.node.dht import DhtNode


class Streams:
    def __init__(self, node: DhtNode, accounts: Accounts) -> None:
        self.node = node
        self.accounts = accounts

    async def close(self) -> None:
        return None
