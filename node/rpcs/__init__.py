"""The RPCs: the `kademlia`-compatible ones (`stock.py`), and dhtmesh's own `dm_*` RPCs, each with its typed
request and reply, client call and handler side by side (`mesh.py` lists them)."""
