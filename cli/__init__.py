"""The `dhtmesh` command: `run` a node, talk to a running node's proxy, manage identities."""
