"""UDP wire: `rpcudp`-compatible framing, bounded decoding, the RPC endpoint built on it, and big messages
moved in pieces (`fragments.py`)."""
