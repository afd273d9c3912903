"""Iterative lookups over the network, written as pure functions of an injected query."""
