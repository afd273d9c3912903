"""UDP wire: `rpcudp`-compatible framing, bounded decoding, and the RPC endpoint built on it."""
