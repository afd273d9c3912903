"""Jobs on the mesh: dcp-rest's jobs, their slices computed by worker nodes in a V8 sandbox.

A job's records (the owner's signed job, its slice batches, the workers' leases and signed results)
live in the DHT (`records.job`); a worker (`worker`) leases batches, runs them in sandbox processes
(`sandbox`) and publishes signed results; any node reads a job's state from the mesh (`view`), and
the result of each slice is the one a strict majority of its workers agree on (`votes`).
"""
