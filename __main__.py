"""Allows `python -m dhtmesh`."""

from dhtmesh.cli.main import main

raise SystemExit(main())
