"""Iterative lookups over the network: `traverse`, a pure function of an injected query; a node's lookups
over `dm_find` (`query.py`) and the values they gather (`values.py`)."""
