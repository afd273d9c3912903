"""Mesh-wide user accounts (ptg-api-server's users): account records in the DHT, passwords turned into
keys by Argon2id, and the JWTs a node issues for them and every node verifies."""
