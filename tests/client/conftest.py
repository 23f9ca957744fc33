"""The client tests' servers as fixtures (see ``servers.py``)."""

from servers import grpc_server, http_server  # noqa: F401  (fixtures, found by name)
