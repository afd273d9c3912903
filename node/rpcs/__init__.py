"""RPC handlers: the four `kademlia`-compatible ones, and dhtmesh's own `dm_*` RPCs."""
