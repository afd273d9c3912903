"""`Accounts`: the mesh's user accounts as a node's service (skeleton: filled in by issue 17's work)."""

from dhtmesh.node.dht import DhtNode


class Accounts:
    def __init__(self, node: DhtNode) -> None:
        self.node = node

    async def close(self) -> None:
        return None
