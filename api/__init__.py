"""The contract between the proxy and its clients: how a key names itself in a path, how a value is
written in JSON, how a farmer's signed record rides on a request, and the routes' paths. The proxy
(`dhtmesh.proxy`) and the client (`dhtmesh.client`) both import it; neither imports the other."""
