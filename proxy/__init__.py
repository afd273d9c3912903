"""The local HTTP proxy: OpenDHT's REST API over a running `DhtNode`. The node knows nothing of HTTP."""
