"""Who the node knows: contacts, XOR distance, and the k-bucket routing table."""
