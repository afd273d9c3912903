"""Joining the mesh: bootstrap addresses, saved peers (JSON), and staying joined."""
