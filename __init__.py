"""dhtmesh: a Kademlia DHT node that stores signed values, with an embedded HTTP proxy."""

__version__ = "0.1.0"
