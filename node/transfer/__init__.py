"""Transfers between nodes over TCP, on the same address and port as a node's UDP socket: what is too big
for datagrams (chunks of stored data, their proofs). (`streams` is left for the data streams of the
ptg-style API.)"""
