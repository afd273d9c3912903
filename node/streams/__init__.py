"""Data streams kept by the mesh (ptg-api-server's Redis streams): a stream record in the DHT names a
stream's home replicas; its entries are a durable log on those homes, replicated over node-to-node TCP."""
